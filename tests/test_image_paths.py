"""Image names travel between RELION and cryopose both ways.

RELION reads a relative rlnImageName from the folder it runs in (the project folder) and
writes names relative to it; cryopose reads them from the STAR file's folder, else the
working folder, else a folder above the file's, and says which; a STAR file it writes inside
the working folder names its stacks relative to that folder, as RELION does. Where RELION is
installed (``apt-get install relion``) each side reads the other's files for real.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cli_helpers import BUNDLED, run
from cryopose.io import ParticleImages, read_star

RELION = shutil.which("relion_reconstruct") and shutil.which("relion_project")
needs_relion = pytest.mark.skipif(not RELION, reason="RELION is not installed (apt-get install relion)")


def _names(star: Path) -> list[str]:
    return [
        next(f for f in line.split() if "@" in f)
        for line in star.read_text().splitlines()
        if "@" in line and not line.startswith("_")
    ]


@pytest.fixture
def project(tmp_path, monkeypatch, capsys) -> Path:
    """A project folder with particles simulated into Simulate/job001 from the project folder."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    code, _, err = run(["simulate", "--map", BUNDLED, "--n", "12", "--snr", "10", "--out", "Simulate/job001"], capsys)
    assert code == 0, err
    return root


def test_a_star_written_inside_the_working_folder_names_stacks_from_it(project):
    assert _names(project / "Simulate/job001/particles.star")[:2] == [
        "000001@Simulate/job001/particles.mrcs",
        "000002@Simulate/job001/particles.mrcs",
    ]


def test_a_star_written_outside_the_working_folder_names_stacks_from_its_own(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(["simulate", "--map", BUNDLED, "--n", "3", "--snr", "10", "--out", tmp_path / "sim"], capsys)
    assert code == 0, err
    assert _names(tmp_path / "sim" / "particles.star")[0] == "000001@particles.mrcs"


def test_names_relative_to_the_working_folder_are_read_and_said(project, capsys):
    star = project / "Simulate/job001/particles.star"
    ps = read_star(star)
    assert ps.source_dir == project
    assert "read from" in capsys.readouterr().err  # the cryopose logger's line reaches stderr in the CLI
    code, _, err = run(["reconstruct", "Simulate/job001/particles.star", "--out", "Reconstruct/job002"], capsys)
    assert code == 0, err
    assert f"are read from {project} (the working folder, as RELION reads them)" in err


def test_names_relative_to_a_folder_above_are_found_from_anywhere(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the project folder
    star = project / "Simulate/job001/particles.star"
    images = ParticleImages(read_star(star))
    np.testing.assert_array_equal(images.read(np.arange(12)), mrcfile.read(project / "Simulate/job001/particles.mrcs"))
    code, _, err = run(["reconstruct", star, "--out", tmp_path / "rec"], capsys)
    assert code == 0, err
    assert f"are read from {project} (a folder above it)" in err


def test_the_star_folder_wins_and_a_missing_stack_names_every_place_looked(tmp_path, monkeypatch, capsys):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")  # outside the star's folder: names are the star's own
    code, _, err = run(
        ["simulate", "--map", BUNDLED, "--n", "3", "--snr", "10", "--out", tmp_path / "a" / "sim"], capsys
    )
    assert code == 0, err
    star = tmp_path / "a" / "sim" / "particles.star"
    assert read_star(star).source_dir == star.parent  # its own folder first: nothing said
    (star.parent / "particles.mrcs").rename(star.parent / "moved.mrcs")
    code, _, err = run(["reconstruct", star, "--out", tmp_path / "rec"], capsys)
    assert code == 2
    assert "does not exist" in err and "the working folder" in err and "Traceback" not in err


@needs_relion
def test_relion_reads_what_cryopose_writes(project, capsys):
    """relion_reconstruct, run from the project folder, reads the stacks of a STAR file that
    cryopose wrote there, and reconstructs the map cryopose reconstructs."""
    code, _, err = run(["simulate", "--map", BUNDLED, "--n", "300", "--snr", "10", "--out", "Simulate/job003"], capsys)
    assert code == 0, err
    done = subprocess.run(
        ["relion_reconstruct", "--i", "Simulate/job003/particles.star", "--o", "relion.mrc", "--ctf"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    code, _, err = run(["reconstruct", "Simulate/job003/particles.star", "--out", "Reconstruct/job002"], capsys)
    assert code == 0, err
    ours = mrcfile.read(project / "Reconstruct/job002/map.mrc")
    theirs = mrcfile.read(project / "relion.mrc")
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.95  # 0.98 measured


@needs_relion
def test_cryopose_reads_what_relion_writes(project, tmp_path, monkeypatch, capsys):
    """relion_project, run from the project folder, names its stack relative to it; cryopose
    reads the images from the project folder and from anywhere else."""
    shutil.copy(BUNDLED, project / "map.mrc")
    (project / "Project/job003").mkdir(parents=True)  # RELION's pipeline makes a job's folder before the job runs
    done = subprocess.run(
        ["relion_project", "--i", "map.mrc", "--o", "Project/job003/proj", "--nr_uniform", "6", "--angpix", "5.7"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    star = project / "Project/job003/proj.star"
    assert _names(star)[0].endswith("@Project/job003/proj.mrcs")
    for where in (project, tmp_path):
        monkeypatch.chdir(where)
        images = ParticleImages(read_star(star))
        np.testing.assert_array_equal(images.read(np.arange(6)), mrcfile.read(project / "Project/job003/proj.mrcs"))
