"""ParticleSet accessors refuse non-finite poses, origins, CTF values and pixel sizes with one
UserError naming the column and the particles (1-based rows); NaN elsewhere round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryopose.errors import UserError
from cryopose.io import read_star, write_star
from cryopose.particles import ParticleSet


def particles(n: int = 8) -> ParticleSet:
    rng = np.random.default_rng(0)
    rots = Rotation.random(n, random_state=1).as_matrix().transpose(0, 2, 1)
    ctf = dict(
        defocus_u=rng.uniform(1e4, 2e4, n),
        defocus_v=rng.uniform(1e4, 2e4, n),
        defocus_angle=30.0,
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
    )
    names = [f"{i + 1:06d}@s.mrcs" for i in range(n)]
    return ParticleSet.from_arrays(
        rots,
        rng.normal(size=(n, 2)),
        1.5,
        32,
        names,
        ctf,
        extra_columns={"rlnRandomSubset": [1, 2] * (n // 2), "rlnClassNumber": 1},
    )


def message_of(call) -> str:
    with pytest.raises(UserError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message and "np.float64" not in message
    return message


@pytest.mark.parametrize(
    "column, accessor",
    [
        ("rlnAngleRot", lambda p: p.rotations),
        ("rlnAngleTilt", lambda p: p.rotations),
        ("rlnAnglePsi", lambda p: p.rotations),
        ("rlnOriginXAngst", lambda p: p.shifts_angstrom),
        ("rlnOriginYAngst", lambda p: p.shifts_angstrom),
        ("rlnDefocusU", lambda p: p.ctf_parameters()),
        ("rlnDefocusV", lambda p: p.ctf_parameters()),
        ("rlnDefocusAngle", lambda p: p.ctf_parameters()),
        ("rlnVoltage", lambda p: p.ctf_parameters()),
        ("rlnSphericalAberration", lambda p: p.ctf_parameters()),
        ("rlnAmplitudeContrast", lambda p: p.ctf_parameters()),
        ("rlnPhaseShift", lambda p: p.ctf_parameters()),
        ("rlnCtfBfactor", lambda p: p.ctf_parameters()),
        ("rlnCtfScalefactor", lambda p: p.ctf_parameters()),
        ("rlnImagePixelSize", lambda p: p.pixel_size),
        ("rlnRandomSubset", lambda p: p.half_sets),
        ("rlnClassNumber", lambda p: p.class_numbers),
    ],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(column: str, accessor, bad: float) -> None:
    p = particles()
    if column not in p.table.columns:
        p = p.with_columns(**{column: 1.0})
    accessor(p)  # fine before
    values = p.table[column].to_numpy(dtype=float).copy()
    values[[2, 5]] = bad
    q = p.with_columns(**{column: values})
    message = message_of(lambda: accessor(q))
    assert column in message and "2 of 8 particles" in message and "rows 3, 6" in message, message
    assert "000003@s.mrcs" in message and repr(float(bad)) in message, message


def test_message_lists_the_first_few(tmp_path: Path) -> None:
    p = particles(40)
    values = p.table["rlnAngleTilt"].to_numpy().copy()
    values[7:] = np.nan
    message = message_of(lambda: p.with_columns(rlnAngleTilt=values).rotations)
    assert "33 of 40 particles (rows 8, 9, 10, 11, 12, ..., counted from 1" in message, message
    one = p.table["rlnAngleTilt"].to_numpy().copy()
    one[0] = np.inf
    message = message_of(lambda: p.with_columns(rlnAngleTilt=one).rotations)
    assert "(row 1, counted from 1; 000001@s.mrcs has inf); fix or remove it" in message, message


def test_pre31_origins_and_pixel_sizes(tmp_path: Path) -> None:
    p = particles()
    # pre-3.1 origins in pixels (used when there are no rlnOriginX/YAngst)
    table = p.table.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"]).assign(
        rlnOriginX=np.r_[0.0, np.nan, 0, 0, 0, 0, 0, 0], rlnOriginY=0.0
    )
    message = message_of(lambda: ParticleSet(table=table).shifts_angstrom)
    assert "rlnOriginX is not finite for 1 of 8 particles (row 2," in message, message
    for value, problem in ((0.0, "not a positive number"), (-1.0, "not a positive number"), (np.nan, "not a positive")):
        r = p.with_columns(rlnImagePixelSize=value)
        message = message_of(lambda: r.pixel_size)
        assert "rlnImagePixelSize" in message and problem in message and "8 of 8" in message, message
    # RELION 3.0 pixel size from a zero magnification
    t = p.table.drop(columns=["rlnImagePixelSize"]).assign(rlnMagnification=0.0, rlnDetectorPixelSize=5.0)
    assert "rlnDetectorPixelSize*1e4/rlnMagnification" in message_of(lambda: ParticleSet(table=t).pixel_size)
    # still: no pixel size at all is its own message
    assert "has no pixel size" in message_of(
        lambda: ParticleSet(table=p.table.drop(columns=["rlnImagePixelSize"])).pixel_size
    )


def test_voltage_and_box_size() -> None:
    p = particles()
    assert "rlnVoltage is not positive" in message_of(lambda: p.with_columns(rlnVoltage=0.0).ctf_parameters())
    assert "rlnImageSize" in message_of(lambda: p.with_columns(rlnImageSize=np.nan).image_size)
    assert "not a whole number" in message_of(lambda: p.with_columns(rlnRandomSubset=1.5).half_sets)


def test_nan_in_unused_columns_round_trips(tmp_path: Path) -> None:
    p = particles().with_columns(rlnMyScore=np.r_[np.nan, 1.0, np.inf, 2, 3, 4, 5, 6], rlnCtfFigureOfMerit=np.nan)
    write_star(p, tmp_path / "n.star")
    q = read_star(tmp_path / "n.star")
    assert np.isnan(q.table["rlnMyScore"].iloc[0]) and np.isinf(q.table["rlnMyScore"].iloc[2])
    assert q.table["rlnCtfFigureOfMerit"].isna().all()
    np.testing.assert_allclose(q.rotations, p.rotations, atol=1e-9)  # the used columns are fine
    assert q.ctf_parameters() is not None and q.pixel_size[0] == 1.5
    write_star(q, tmp_path / "n2.star")
    assert (tmp_path / "n.star").read_text() == (tmp_path / "n2.star").read_text()


def test_star_file_name_in_message(tmp_path: Path) -> None:
    p = particles()
    write_star(p.with_columns(rlnAnglePsi=np.r_[1.0, 2, 3, np.nan, 5, 6, 7, 8]), tmp_path / "bad.star")
    q = read_star(tmp_path / "bad.star")
    message = message_of(lambda: q.rotations)
    assert str(tmp_path / "bad.star") in message and "rlnAnglePsi" in message and "row 4," in message
