"""``cryopose refine``: gold-standard refinement, local and global.

Simulated particles of the bundled map Fourier-cropped to 48 px (7.6 Å/px), SNR 1, CTF,
origins up to 10 Å; starting poses perturbed by exactly 5 deg (random axes) and origins
by exactly 3 Å (random directions), or no poses at all (--global). Also the likelihood
kernel against direct sums, the hard bound and the Gaussian prior of the local search,
the first band of low-passed references and the chance check.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cryopose
from cli_helpers import BUNDLED, assert_user_error, run
from cryopose.align.local_search import LocalSearchSettings, local_search
from cryopose.align.map_alignment import apply_transform
from cryopose.align.refine_chunks import local_search_chunk, residual_power_chunk
from cryopose.align.refinement import (
    angular_step_for_resolution,
    chance_reasons,
    local_search_schedule,
    map_content_resolution,
    reference_resolution,
)
from cryopose.align.scoring import (
    GaussianNoise,
    make_reference,
    prepare_particles,
    residual_shell_power,
    score_poses,
    shell_sizes,
)
from cryopose.geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from cryopose.imaging.filters import lowpass_volume
from cryopose.imaging.projection import fourier_volume
from cryopose.imaging.resample import resample_map
from cryopose.imaging.shifts import shift_rfft2
from cryopose.imaging.simulation import add_noise, clean_particle_images, draw_simulation_parameters
from cryopose.io import read_particles, write_star
from cryopose.io.mrc import read_map, write_map
from cryopose.jobs import refine as job
from cryopose.jobs.chunks import torch_threads
from cryopose.jobs.refine import RefineSettings, run_refine
from cryopose.jobs.simulate import SimulateSettings, run_simulate
from cryopose.reconstruct.fsc import fourier_shell_correlation


def _deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(geodesic_distance(a.double(), b.double()))


def _perturb(rotations: torch.Tensor, shifts: torch.Tensor, angle: float, shift: float, seed: int):
    """Poses rotated by exactly ``angle`` deg about random axes; origins moved by exactly ``shift`` Å."""
    g = torch.Generator().manual_seed(seed)
    n = len(rotations)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    start = axis_angle_to_matrix(math.radians(angle) * axis / axis.norm(dim=-1, keepdim=True)) @ rotations
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    return start, shifts + shift * torch.stack([phi.cos(), phi.sin()], -1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """300 particles at 48 px with their true poses (sim/particles.star) and the map."""
    root = tmp_path_factory.mktemp("refine")
    volume, apix = read_map(BUNDLED)
    small, small_apix = resample_map(torch.from_numpy(volume).double(), apix, 64 * apix / 48, 48)
    write_map(root / "map.mrc", small.float().numpy(), small_apix)
    with torch_threads(1):
        run_simulate(root / "map.mrc", root / "sim", SimulateSettings(n=300, snr=1.0, max_shift=10.0, seed=1))
    truth = read_particles(root / "sim" / "particles.star")
    return {"root": root, "map": root / "map.mrc", "truth": truth, "tensors": truth.to_tensors(), "apix": small_apix}


def _start(data, path: Path, rows: np.ndarray, random_fraction: float = 0.0, seed: int = 7) -> tuple[Path, np.ndarray]:
    """A star of the particles ``rows`` with perturbed poses (a fraction of them random)."""
    t = data["tensors"][rows]
    start, origins = _perturb(t.rotations, t.shifts_angstrom, 5.0, 3.0, seed)
    n_random = int(round(random_fraction * len(rows)))
    is_random = np.zeros(len(rows), dtype=bool)
    is_random[np.random.default_rng(seed).permutation(len(rows))[:n_random]] = True
    start[torch.from_numpy(is_random)] = random_rotations(n_random, torch.Generator().manual_seed(seed)).double()
    write_star(data["truth"].subset(rows).with_poses(start.numpy(), origins.numpy()), path)
    return path, is_random


@pytest.fixture(scope="module")
def refined(data):
    """The 300 perturbed particles refined with the default settings."""
    root = data["root"]
    star, _ = _start(data, root / "start.star", np.arange(300))
    with torch_threads(1):
        summary = run_refine(star, data["map"], root / "refined", settings=RefineSettings(iterations=4))
    return summary, read_particles(root / "refined" / "particles.star"), read_particles(star)


# ----------------------------------------------------------------------------- accuracy
def test_perturbed_poses_come_back(data, refined):
    summary, out, start = refined
    truth = data["tensors"]
    t = out.to_tensors()
    before = _deg(start.to_tensors().rotations, truth.rotations)
    after = _deg(t.rotations, truth.rotations)
    shift_error = (t.shifts_angstrom - truth.shifts_angstrom).norm(dim=-1)
    assert before.median() == pytest.approx(5.0, abs=1e-6)
    assert after.median() < 1.5, after.median()
    assert shift_error.median() < 1.0, shift_error.median()
    # the refined map is better than the start's, and the summary says so
    assert summary["resolution_0143"] < summary["resolution_start_0143"]
    assert summary["iterations"][summary["best_iteration"]]["resolution_0143"] == summary["resolution_0143"]


def test_outputs_keep_every_input_column_and_record_each_iteration(data, refined):
    summary, out, start = refined
    root = data["root"] / "refined"
    for name in job.OUTPUTS:
        assert (root / name).is_file(), name
    assert not (root / job.STORE).exists()
    assert set(start.table.columns) <= set(out.table.columns)
    for c in (*job.COLUMN_NAMES, "rlnRandomSubset"):
        assert c in out.table.columns
    change = _deg(out.to_tensors().rotations, start.to_tensors().rotations).numpy()
    np.testing.assert_allclose(out.table["cryoposePoseChange"].to_numpy(float), change, atol=1e-3)
    assert np.all(out.table["cryoposeRefineScore"].to_numpy(float) > 0)  # NCC of aligned particles
    its = summary["iterations"]
    assert [r["iteration"] for r in its] == list(range(len(its))) and len(its) >= 2
    for r in its[1:]:
        assert r["resolution_0143"] > 0 and len(r["fsc"]) == 25 and r["search_seconds"] > 0
        finest = angular_step_for_resolution(r["comparison_resolution"], 0.9 * 48 * data["apix"])
        assert r["angle_step_finest_deg"] <= finest
    # the map is compared with the reference map given (here the truth): refinement brings it closer
    assert its[summary["best_iteration"]]["map_vs_reference_0143"] < its[0]["map_vs_reference_0143"]
    text = (root / "fsc.csv").read_text().splitlines()
    assert text[0] == "shell,frequency_per_A,resolution_A,fsc" and len(text) == 26


def test_with_a_wall_random_poses_are_not_pulled_in_beyond_it(data, tmp_path):
    rows = np.arange(120)
    star, is_random = _start(data, tmp_path / "start.star", rows, random_fraction=0.2, seed=11)
    settings = RefineSettings(iterations=2, prior="wall")
    with torch_threads(1):
        # the Python API
        summary = cryopose.refine_poses(star, data["map"], tmp_path / "out", iterations=2, prior="wall")
    out = read_particles(tmp_path / "out" / "particles.star").to_tensors()
    start = read_particles(star).to_tensors()
    truth = data["tensors"][rows]
    moved = _deg(out.rotations, start.rotations)
    finest = min(r["angle_step_finest_deg"] for r in summary["iterations"][1:])
    assert is_random.sum() == 24
    assert moved[is_random].max() <= settings.sigma_angle + finest + 1e-3, moved[is_random].max()
    # the others do move towards the truth (the bound is not a search that stands still)
    before = _deg(start.rotations, truth.rotations)[~is_random]
    after = _deg(out.rotations, truth.rotations)[~is_random]
    assert after.median() < before.median() - 1.5
    origin_moved = (out.shifts_angstrom - start.shifts_angstrom).norm(dim=-1)
    assert origin_moved.max() <= settings.max_shift + 1e-3


def test_each_half_is_scored_only_against_its_own_half_map(data, tmp_path, capsys):
    """Half 2's map is half 1's rotated by 4 deg: V2(y) = V(M y). Particles start at their
    true poses A; against V2 their best pose is A M. So half 1 must stay at A and half 2
    move to A M: any particle scored against the other half's map would do otherwise."""
    rows = np.arange(100)
    truth = data["tensors"][rows]
    halves = np.where(rows % 2 == 0, 1, 2)
    write_star(data["truth"].subset(rows).with_columns(rlnRandomSubset=halves), tmp_path / "start.star")
    volume, apix = read_map(data["map"])
    m = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64) / math.sqrt(0.98) * math.radians(4.0))
    write_map(tmp_path / "h1.mrc", volume, apix)
    write_map(tmp_path / "h2.mrc", apply_transform(volume, m.numpy(), np.zeros(3), apix).numpy(), apix)
    args = [
        "refine",
        "--particles",
        tmp_path / "start.star",
        "--map",
        data["map"],
        "--half-maps",
        tmp_path / "h1.mrc",
        tmp_path / "h2.mrc",
        "--iterations",
        "1",
        "--out",
        tmp_path / "out",
    ]
    with torch_threads(1):
        code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert "100 particles (local):" in stdout
    out = read_particles(tmp_path / "out" / "particles.star")
    np.testing.assert_array_equal(out.table["rlnRandomSubset"].to_numpy(), halves)
    got = out.to_tensors().rotations
    one, two = torch.from_numpy(halves == 1), torch.from_numpy(halves == 2)
    assert _deg(got[one], truth.rotations[one]).median() < 1.0
    assert _deg(got[two], truth.rotations[two] @ m).median() < 1.0
    assert _deg(got[two], truth.rotations[two]).median() > 3.0


# ----------------------------------------------------------------------------- resume
def _tables_equal(a: Path, b: Path) -> None:
    ta, tb = read_particles(a).table, read_particles(b).table
    for c in (
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "cryoposeRefineScore",
    ):
        np.testing.assert_allclose(ta[c].to_numpy(float), tb[c].to_numpy(float), rtol=0, atol=1e-9, err_msg=c)


def test_an_interrupted_run_resumes_with_the_same_result(data, tmp_path, monkeypatch, caplog):
    star, _ = _start(data, tmp_path / "start.star", np.arange(80), seed=3)
    settings = RefineSettings(iterations=2, chunk_size=20)
    calls = []

    def stop_after_first_chunk(k, total):
        calls.append(k)
        raise KeyboardInterrupt

    with torch_threads(1):
        with pytest.raises(KeyboardInterrupt):
            run_refine(star, data["map"], tmp_path / "a", settings=settings, progress=stop_after_first_chunk)
        assert calls == [20]
        assert not (tmp_path / "a" / "particles.star").exists()
        stored = list((tmp_path / "a" / job.STORE / "iteration_01_search").glob("chunk_*.npz"))
        assert len(stored) == 1
        searched = []
        original = job._search_part
        monkeypatch.setattr(
            job, "_search_part", lambda shared, part: searched.append(len(part[2])) or original(shared, part)
        )
        summary = run_refine(star, data["map"], tmp_path / "a", settings=settings)
        # iteration 1: the stored chunk is not searched again; iteration 2 (if run) in full
        assert searched == [20] * (3 + 4 * (len(summary["iterations"]) - 2))
        assert not (tmp_path / "a" / job.STORE).exists()
        monkeypatch.setattr(job, "_search_part", original)
        run_refine(star, data["map"], tmp_path / "b", settings=settings)
    _tables_equal(tmp_path / "a" / "particles.star", tmp_path / "b" / "particles.star")
    for name in ("half1.mrc", "map.mrc"):
        assert read_map(tmp_path / "a" / name)[0].tobytes() == read_map(tmp_path / "b" / name)[0].tobytes()

    # interrupted again, then rerun with another setting: it starts over and says why
    with torch_threads(1):
        with pytest.raises(KeyboardInterrupt):
            run_refine(star, data["map"], tmp_path / "c", settings=settings, progress=stop_after_first_chunk)
        with caplog.at_level(logging.INFO, logger="cryopose"):
            run_refine(
                star,
                data["map"],
                tmp_path / "c",
                settings=RefineSettings(iterations=1, chunk_size=20, sigma_angle=4, prior="wall"),
            )
    assert any("sigma_angle" in r.getMessage() and "discarding" in r.getMessage() for r in caplog.records)
    moved = read_particles(tmp_path / "c" / "particles.star").table["cryoposePoseChange"].to_numpy(float)
    assert moved.max() <= 4 + 1e-3


# ----------------------------------------------------------------------------- the numerical pieces
@pytest.fixture(scope="module")
def small_case():
    vol, apix = read_map(BUNDLED)
    small, small_apix = resample_map(torch.from_numpy(vol).double(), apix, 2 * apix, 32)
    g = torch.Generator().manual_seed(4)
    draw = draw_simulation_parameters(6, g, max_shift_angstrom=8.0)
    clean = clean_particle_images(
        fourier_volume(small.float()),
        draw.rotations.float(),
        (draw.shifts_angstrom / small_apix).float(),
        draw.ctf,
        small_apix,
    )
    return small.float(), small_apix, draw, add_noise(clean, 2.0, g)


def test_residual_power_and_likelihood_equal_direct_sums(small_case):
    vol, apix, draw, images = small_case
    ref = make_reference(vol, apix, 3 * apix)
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    origins = (draw.shifts_angstrom / ref.work_pixel_size).float()
    power, scale = residual_shell_power(ref, prep, draw.rotations.float(), origins)
    # direct: full transforms (no half-transform weights), shells round(|k|)
    n = ref.work_box
    from cryopose.imaging.projection import project_fourier

    g = project_fourier(ref.volume, draw.rotations.float()) * ref.band() * prep.ctf
    g = shift_rfft2(g, -origins)
    x = prep.spectra * ref.band()
    full_x = torch.fft.fft2(torch.fft.irfft2(x, s=(n, n)))
    full_g = torch.fft.fft2(torch.fft.irfft2(g, s=(n, n)))
    a = (full_x * full_g.conj()).real.sum((-2, -1)) / (full_g.abs() ** 2).sum((-2, -1))
    torch.testing.assert_close(scale, a.clamp_min(0), rtol=1e-4, atol=1e-6)
    assert (scale > 0).all()
    k = torch.round(torch.fft.fftfreq(n) * n)  # integer frequency indices
    shell = torch.round(torch.sqrt(k[:, None] ** 2 + k[None] ** 2)).long()
    r = (full_x - a[:, None, None] * full_g).abs() ** 2
    inside = (k[:, None] ** 2 + k[None] ** 2 <= ref.radius**2) & (shell >= 1)
    direct = torch.stack(
        [torch.stack([r[b][inside & (shell == s)].sum() for s in range(ref.radius + 1)]) for b in range(6)]
    )
    torch.testing.assert_close(power, direct, rtol=1e-3, atol=1e-2)
    sizes = shell_sizes(ref)
    assert sizes.tolist() == [float((inside & (shell == s)).sum()) for s in range(ref.radius + 1)]
    # the likelihood of the kernel equals -1/2 sum |X - a G_t|^2 / sigma^2 at the candidate's origin
    sigma2 = torch.linspace(1.0, 3.0, ref.radius + 1) * power[:, 1:].mean()
    noise = GaussianNoise(sigma2, scale)
    offsets = torch.tensor([[0.0, 0.0], [0.5, -0.25]])
    got = score_poses(ref, prep, torch.arange(6), draw.rotations.float(), offsets, origins, noise=noise)
    for t, off in enumerate(offsets):
        gt = torch.fft.fft2(torch.fft.irfft2(shift_rfft2(g, -off.expand(6, 2)), s=(n, n)))
        w = torch.where(inside, 1 / sigma2[shell.clamp_max(ref.radius)], torch.zeros(()))
        expected = -0.5 * ((full_x - scale[:, None, None] * gt).abs() ** 2 * w).sum((-2, -1))
        torch.testing.assert_close(got[:, t], expected, rtol=1e-4, atol=1e-3)
    assert (got[:, 0] > got[:, 1]).all()  # the true origin is more likely


def test_chunk_searches_score_each_half_against_its_own_reference(small_case):
    vol, apix, draw, images = small_case
    references = (make_reference(vol, apix, 3 * apix), make_reference(vol.flip(0), apix, 3 * apix))  # unlike maps
    halves = torch.tensor([2, 1, 1, 2, 1, 2])
    start, origins = _perturb(draw.rotations, draw.shifts_angstrom, 3.0, 1.0, seed=5)
    settings = LocalSearchSettings(max_angle=4, angle_step=2, max_shift=2, shift_step=1, levels=2)
    noise = (torch.linspace(1.0, 2.0, references[0].radius + 1), torch.linspace(2.0, 3.0, references[0].radius + 1))
    scales = torch.linspace(0.5, 1.5, 6)
    power = residual_power_chunk(references, images, draw.ctf, halves, start, origins, 0.45)
    found = local_search_chunk(
        references, settings, images, draw.ctf, halves, start, origins, start, origins, 0.45, noise, scales
    )
    assert power["power"].shape == (6, references[0].radius + 1) and found["rotations"].dtype == torch.float32
    for h in (1, 2):  # the same numbers as each half's particles searched alone against their own reference
        rows = torch.nonzero(halves == h).flatten()
        ref = references[h - 1]
        prep = prepare_particles(ref, images[rows], draw.ctf[rows], ctf_references=True, mask_radius=0.45)
        p, a = residual_shell_power(ref, prep, start[rows].float(), (origins[rows] / ref.work_pixel_size).float())
        assert torch.equal(power["power"][rows], p) and torch.equal(power["scale"][rows], a)
        alone = local_search(
            ref,
            prep,
            start[rows].float(),
            origins[rows].float(),
            settings,
            prior_rotations=start[rows],
            prior_shifts_angstrom=origins[rows],
            noise=GaussianNoise(noise[h - 1], scales[rows]),
        )
        assert torch.equal(found["rotations"][rows], alone.rotations)
        assert torch.equal(found["shifts"][rows], alone.shifts_angstrom)
        assert torch.equal(found["scores"][rows], alone.scores.float())


def test_local_search_never_leaves_the_prior_bounds(small_case):
    vol, apix, draw, images = small_case
    ref = make_reference(vol, apix, 3 * apix)
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    # priors 10 deg and 6 A from the truth, bounds of 4 deg and 2 A: the search goes towards
    # the truth but must stop at the bounds
    prior, prior_origin = _perturb(draw.rotations, draw.shifts_angstrom, 10.0, 6.0, seed=2)
    settings = LocalSearchSettings(
        max_angle=6, angle_step=2, max_shift=4, shift_step=2, levels=3, prior_angle=4.0, prior_shift=2.0
    )
    res = local_search(
        ref,
        prep,
        prior.float(),
        prior_origin.float(),
        settings,
        prior_rotations=prior,
        prior_shifts_angstrom=prior_origin,
    )
    moved = _deg(res.rotations, prior)
    assert moved.max() <= 4.0 + 1e-3 and moved.min() > 2.0  # pulled to the bound, not beyond
    shifted = (res.shifts_angstrom.double() - prior_origin).norm(dim=-1)
    assert shifted.max() <= 2.0 + 1e-3 and shifted.min() > 1.0
    free = local_search(
        ref,
        prep,
        prior.float(),
        prior_origin.float(),
        LocalSearchSettings(max_angle=6, angle_step=2, max_shift=4, shift_step=2, levels=3),
    )
    assert _deg(free.rotations, prior).max() > 4.5  # without the bound it goes farther


def test_schedule_steps_shrink_with_resolution():
    coarse = local_search_schedule(30.0, 300.0, 6.0, 5.0)
    fine = local_search_schedule(8.0, 300.0, 6.0, 5.0)
    finest = lambda s: s.angle_step / 2 ** (s.levels - 1)  # noqa: E731
    assert coarse.angle_step == fine.angle_step == 2.0 and coarse.prior_sigma == 6.0 and coarse.prior_shift == 5.0
    assert coarse.prior_angle is None and coarse.max_angle == 6.0
    wall = local_search_schedule(30.0, 300.0, 4.0, 5.0, search_angle=9.0, prior="wall")
    assert wall.prior_angle == 4.0 and wall.prior_sigma is None and wall.max_angle == 9.0 and wall.angle_step == 3.0
    assert finest(fine) < finest(coarse)
    for s, d in ((coarse, 30.0), (fine, 8.0)):
        assert finest(s) <= angular_step_for_resolution(d, 300.0) < 2 * finest(s)
    assert fine.shift_step == 2.0 and coarse.shift_step == 2.5  # min(max_shift / 2, d / 4)


def test_help_shows_the_options(capsys):
    code, out, _ = run(["refine", "--help"], capsys)
    assert code == 0
    for flag in (
        "--particles",
        "--map",
        "--half-maps",
        "--sigma-angle",
        "--max-shift",
        "--iterations",
        "--score",
        "--sym",
        "--workers",
        "--scheduler",
        "--device",
        "--force",
        "--global",
        "--ini-high",
        "--initial-reference",
        "--prior",
        "--search-angle",
        "--global-passes",
        "--global-sampling",
    ):
        assert flag in out, flag


# ----------------------------------------------------------------------------- the first references
def test_ini_high_low_pass_holds_its_band_and_the_first_search_stays_in_it(data, refined):
    volume, apix = read_map(data["map"])
    vol = torch.from_numpy(volume)
    box = vol.shape[-1]
    assert map_content_resolution(vol, apix) == pytest.approx(2 * apix)  # a map with content to Nyquist
    low = lowpass_volume(vol, 40.0, apix)
    held = map_content_resolution(low, apix)
    # the raised-cosine edge reaches one shell past the cut-off, no further
    assert box * apix / held == math.floor(box * apix / 40.0) + 1
    # the default run started from the map low-passed to 30 A, for both halves, and searched in that band
    summary = refined[0]
    first, second = summary["iterations"][:2]
    assert first["references"] == "the map low-passed to 30 A" and first["halves_identical"]
    assert first["resolution_0143"] == summary["resolution_start_0143"] == 30.0
    assert first["fsc_0143_of_the_halves"] == pytest.approx(2 * apix)  # one map twice: FSC 1 to Nyquist, not used
    assert second["comparison_resolution"] == 30.0
    assert second["working_box"] < box


def test_identical_half_maps_do_not_set_the_band_to_nyquist(data, tmp_path, capsys):
    volume, apix = read_map(data["map"])
    vol = torch.from_numpy(volume)
    box = vol.shape[-1]
    low = lowpass_volume(vol, 25.0, apix)
    f = fourier_shell_correlation(low, low.clone(), apix)
    assert f.resolution_0143 == pytest.approx(2 * apix)  # what the FSC alone would say
    held = map_content_resolution(low, apix)
    assert reference_resolution(f.fsc, f.resolution_0143, held, 40.0, box, apix) == (40.0, True)  # --ini-high 40
    # never past the content
    assert reference_resolution(f.fsc, f.resolution_0143, held, 20.0, box, apix) == (held, True)
    # two different half maps: their FSC, but not beyond what they hold
    noisy = low + 0.05 * low.std() * torch.randn(low.shape, generator=torch.Generator().manual_seed(0))
    g = fourier_shell_correlation(low, lowpass_volume(noisy, 25.0, apix), apix)
    res, same = reference_resolution(g.fsc, g.resolution_0143, held, 40.0, box, apix)
    assert not same and res == pytest.approx(max(g.resolution_0143, held)) and res >= held
    # through the command: the same low-passed map as both halves is searched at --ini-high, not at Nyquist
    write_map(tmp_path / "low.mrc", low.numpy(), apix)
    star, _ = _start(data, tmp_path / "start.star", np.arange(40))
    with torch_threads(1):
        code, _, err = run(
            [
                "refine",
                "--particles",
                star,
                "--map",
                data["map"],
                "--half-maps",
                tmp_path / "low.mrc",
                tmp_path / "low.mrc",
                "--iterations",
                "1",
                "--ini-high",
                "35",
                "--out",
                tmp_path / "out",
            ],
            capsys,
        )
    assert code == 0, err
    import json

    its = json.loads((tmp_path / "out" / "summary.json").read_text())["iterations"]
    assert its[0]["references"] == "given half maps" and its[0]["halves_identical"]
    assert its[1]["comparison_resolution"] == 35.0


def test_initial_references_from_the_input_poses_stay_available(data, tmp_path):
    star, _ = _start(data, tmp_path / "start.star", np.arange(60))
    with torch_threads(1):
        summary = run_refine(
            star, data["map"], tmp_path / "out", settings=RefineSettings(iterations=1, initial_reference="poses")
        )
    first = summary["iterations"][0]
    assert first["references"] == "reconstructed from the input poses" and not first["halves_identical"]
    assert first["resolution_0143"] == first["fsc_0143_of_the_halves"] < 30.0
    assert summary["iterations"][1]["comparison_resolution"] == pytest.approx(first["resolution_0143"])


# ----------------------------------------------------------------------------- the prior
def test_a_gaussian_prior_lets_a_pose_beyond_sigma_come_back_and_a_wall_does_not(small_case):
    """Poses 10 deg from the truth, prior sigma 4 deg about them, a 6 deg search about the
    current pose, three rounds: with the Gaussian prior they come back to the truth; a wall
    at 4 deg holds them at least 6 deg away."""
    vol, apix, draw, images = small_case
    ref = make_reference(vol, apix, 3 * apix)
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    prior, prior_origin = _perturb(draw.rotations, draw.shifts_angstrom, 10.0, 0.0, seed=5)
    ends = {}
    for kind in ("gaussian", "wall"):
        search = local_search_schedule(3 * apix, 0.9 * 32 * apix, 4.0, 2.0, search_angle=6.0, prior=kind)
        rot, origin = prior.float(), prior_origin.float()
        for _ in range(3):
            res = local_search(
                ref, prep, rot, origin, search, prior_rotations=prior, prior_shifts_angstrom=prior_origin
            )
            rot, origin = res.rotations, res.shifts_angstrom
        ends[kind] = _deg(rot, draw.rotations)
    assert ends["gaussian"].max() < 2.0, ends["gaussian"]
    assert ends["wall"].min() > 5.9, ends["wall"]


def test_the_prior_weighs_against_the_data_as_a_log_likelihood(small_case):
    """With NCC the prior is weighed against (M/2) NCC |NCC|: a narrow enough prior keeps the
    particle at its prior pose, a wide one lets the data move it (one level, same candidates)."""
    vol, apix, draw, images = small_case
    ref = make_reference(vol, apix, 3 * apix)
    prep = prepare_particles(ref, images, draw.ctf, ctf_references=True)
    prior, origin = _perturb(draw.rotations, draw.shifts_angstrom, 4.0, 0.0, seed=6)
    moved = {}
    for sigma in (0.05, 30.0):
        s = LocalSearchSettings(max_angle=6, angle_step=2, max_shift=0, levels=1, prior_sigma=sigma)
        res = local_search(ref, prep, prior.float(), origin.float(), s, prior_rotations=prior)
        moved[sigma] = _deg(res.rotations, prior)
    assert moved[0.05].max() < 1e-3
    assert moved[30.0].min() > 1.0


def test_a_local_refinement_brings_back_particles_that_start_beyond_sigma(data, tmp_path):
    rows = np.arange(150)
    t = data["tensors"][rows]
    start, origins = _perturb(t.rotations, t.shifts_angstrom, 10.0, 2.0, seed=9)
    write_star(data["truth"].subset(rows).with_poses(start.numpy(), origins.numpy()), tmp_path / "start.star")
    errors = {}
    with torch_threads(1):
        for kind in ("gaussian", "wall"):
            run_refine(
                tmp_path / "start.star",
                data["map"],
                tmp_path / kind,
                settings=RefineSettings(iterations=2, prior=kind, max_shift=10.0),
            )
            out = read_particles(tmp_path / kind / "particles.star").to_tensors()
            errors[kind] = _deg(out.rotations, t.rotations)
    assert errors["gaussian"].median() < 2.5, errors["gaussian"].median()
    assert errors["wall"].median() > 3.5, errors["wall"].median()


# ----------------------------------------------------------------------------- global
def _without_poses(data, path: Path, rows: np.ndarray) -> Path:
    """A star of the particles ``rows`` with CTF but no angles and no origins."""
    table = (
        data["truth"]
        .subset(rows)
        .table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"])
    )
    write_star(data["truth"].subset(rows).with_table(table), path)
    return path


def test_global_refinement_assigns_poses_without_poses(data, tmp_path, capsys):
    rows = np.arange(160)
    star = _without_poses(data, tmp_path / "ctf_only.star", rows)
    with torch_threads(1):
        code, stdout, err = run(
            [
                "refine",
                "--global",
                "--particles",
                star,
                "--map",
                data["map"],
                "--max-shift",
                "10",
                "--global-passes",
                "1",
                "--iterations",
                "2",
                "--out",
                tmp_path / "out",
            ],
            capsys,
        )
    assert code == 0, err
    assert "global, then local" in stdout and "looks like chance" not in err
    out = read_particles(tmp_path / "out" / "particles.star")
    truth = data["tensors"][rows]
    got = out.to_tensors()
    error = _deg(got.rotations, truth.rotations)
    # uniformly random poses would be 126 deg off on average; a 7.5 deg grid alone about 4-5 deg
    assert error.median() < 3.5, error.median()
    assert (error < 10).double().mean() > 0.85
    assert (got.shifts_angstrom - truth.shifts_angstrom).norm(dim=-1).median() < 3.0
    assert "cryoposePoseChange" not in out.table.columns and "cryoposeRefineScore" in out.table.columns
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    its = summary["iterations"]
    assert [r["search"] for r in its] == [None, "global"] + ["local"] * (len(its) - 2)
    assert its[1]["comparison_resolution"] == 30.0 and its[1]["directions"] > 300 and its[1]["psi_steps"] == 48
    assert its[1]["pose_change_median_deg"] is None
    assert summary["at_chance"] is False and summary["chance_reasons"] == []
    assert summary["resolution_0143"] < 0.8 * summary["chance_resolution_0143"]


def test_an_interrupted_global_run_resumes_with_the_same_result(data, tmp_path, monkeypatch):
    star = _without_poses(data, tmp_path / "ctf_only.star", np.arange(60))
    settings = RefineSettings(global_search=True, global_passes=1, iterations=1, chunk_size=20, max_shift=10.0)

    def stop(k, total):
        raise KeyboardInterrupt

    with torch_threads(1):
        with pytest.raises(KeyboardInterrupt):
            run_refine(star, data["map"], tmp_path / "a", settings=settings, progress=stop)
        assert len(list((tmp_path / "a" / job.STORE / "iteration_01_global").glob("chunk_*.npz"))) == 1
        searched = []
        original = job._global_part
        monkeypatch.setattr(
            job, "_global_part", lambda shared, part: searched.append(len(part[2])) or original(shared, part)
        )
        run_refine(star, data["map"], tmp_path / "a", settings=settings)
        assert searched == [20, 20]  # the stored chunk is not searched again
        monkeypatch.setattr(job, "_global_part", original)
        run_refine(star, data["map"], tmp_path / "b", settings=settings)
    _tables_equal(tmp_path / "a" / "particles.star", tmp_path / "b" / "particles.star")
    assert read_map(tmp_path / "a" / "map.mrc")[0].tobytes() == read_map(tmp_path / "b" / "map.mrc")[0].tobytes()


def test_global_and_local_refusals_are_one_line(data, tmp_path, capsys):
    rows = np.arange(10)
    star = _without_poses(data, tmp_path / "ctf_only.star", rows)
    base = ["refine", "--particles", star, "--map", data["map"], "--out", tmp_path / "out"]
    assert_user_error(base, capsys, "no angles", "--global")
    no_ctf = data["truth"].subset(rows)
    no_ctf = no_ctf.with_table(no_ctf.table.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]))
    write_star(no_ctf, tmp_path / "no_ctf.star")
    assert_user_error(
        [
            "refine",
            "--global",
            "--particles",
            tmp_path / "no_ctf.star",
            "--map",
            data["map"],
            "--out",
            tmp_path / "out",
        ],
        capsys,
        "CTF",
        "--no-ctf",
    )
    assert_user_error([*base, "--global", "--ini-high", "12"], capsys, "coarser than Nyquist", "--ini-high")
    assert_user_error(
        [
            "refine",
            "--particles",
            data["root"] / "sim" / "particles.star",
            "--map",
            data["map"],
            "--half-maps",
            data["map"],
            data["map"],
            "--initial-reference",
            "poses",
            "--out",
            tmp_path / "out",
        ],
        capsys,
        "--initial-reference",
    )
    assert not (tmp_path / "out" / "particles.star").exists()


# ----------------------------------------------------------------------------- chance
def test_a_refinement_from_random_poses_says_it_is_at_chance(data, tmp_path, caplog):
    rows = np.arange(100)
    star, is_random = _start(data, tmp_path / "start.star", rows, random_fraction=1.0, seed=13)
    assert is_random.all()
    with torch_threads(1), caplog.at_level(logging.WARNING, logger="cryopose"):
        summary = run_refine(
            star,
            data["map"],
            tmp_path / "out",
            settings=RefineSettings(iterations=1, prior="wall", initial_reference="poses"),
        )
    assert summary["at_chance"] is True and summary["chance_reasons"]
    assert any("looks like chance" in r.getMessage() for r in caplog.records)


def test_chance_reasons():
    assert chance_reasons(20.0, 40.0, 60.0) == []
    assert "initial low-pass" in chance_reasons(41.0, 40.0, 60.0)[0]
    assert "random poses" in chance_reasons(30.0, 40.0, 35.0)[0]
    assert len(chance_reasons(math.inf, 40.0, 50.0)) == 2
