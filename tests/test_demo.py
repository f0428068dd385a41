"""`cryopose demo` runs end to end and its numbers are right (small run); an interrupted demo
keeps the steps it finished and a rerun goes on from there."""

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from cryopose.cli.main import main
from cryopose.errors import UserError
from cryopose.io import read_star
from cryopose.jobs.demo import MIN_PARTICLES, PROGRESS, DemoSettings, DemoStep


def _demo(out, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), "--n", "600", "--learn-minutes", "0.25"])
    return exc.value.code, capsys.readouterr().out


def test_demo_small(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    # a first run interrupted at the map alignment (Ctrl-C) keeps what it finished
    import cryopose.jobs.align_maps

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cryopose.jobs.align_maps, "run_align_maps", interrupt)
        code, printed = _demo(out, capsys)
    assert code == 130
    assert "$ cryopose validate --map" in printed and "Simulated 600 particles" in printed
    assert (out / PROGRESS).is_file() and not (out / "report.md").exists() and not (out / "maps.png").exists()
    simulated = (out / "simulated" / "particles.mrcs").stat().st_mtime_ns
    # the rerun does not simulate, reconstruct or validate again
    bars = []

    @contextmanager
    def progress_bar(desc, unit="particle"):
        bars.append((desc, unit))
        yield lambda advance, total: None

    monkeypatch.setattr("cryopose.cli.demo.progress_bar", progress_bar)
    code, printed = _demo(out, capsys)
    assert code == 0
    commands = [line for line in printed.splitlines() if line.startswith("$ cryopose")]
    resumed = [line.split()[2] for line in commands if line.endswith("# finished by an earlier run")]
    assert resumed == ["simulate", "reconstruct", "fsc", "validate", "reconstruct", "fsc", "reconstruct", "fsc"]
    assert [line.split()[2] for line in commands[len(resumed) :]] == [
        "align-maps",
        "reconstruct",
        "fsc",
        "train",
        "predict",
        "refine",
    ]
    assert "Simulated 600 particles" in printed and "wrote" in printed and "Demo finished in" in printed
    assert bars == [("reconstruct", "particle"), ("train", "step"), ("predict", "particle"), ("refine", "particle")]
    assert (out / "simulated" / "particles.mrcs").stat().st_mtime_ns == simulated
    assert not (out / PROGRESS).exists()  # a finished demo starts afresh when rerun

    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    for figure in (
        "maps.png",
        "particles.png",
        "validation_fsc.png",
        "validation/soft_validation.png",
        "map_alignment/difference_moved.png",
        "reconstruction/fsc.png",
    ):
        assert (out / figure).stat().st_size > 0, figure
        assert figure in report
    assert summary["pcc_vs_truth"] > 0.5  # 600 particles at SNR 0.1; a broken pipeline gives ~0
    assert abs(summary["validation_Q"] - summary["validation_true_good_fraction"]) < 0.15
    assert summary["validation_kept"]["good"] > summary["validation_kept"]["noise"] + 0.5
    assert summary["alignment_hand_right"] is True
    assert summary["alignment_rotation_error_deg"] < 1.0
    # poses carried along: the moved particles reconstruct as well as the originals
    assert summary["alignment_reconstruction_pcc_vs_truth"] == pytest.approx(summary["pcc_vs_truth"], abs=0.01)
    # learning then refining ran on the held-out 20% (half a minute of training on a shared
    # CPU learns little: the accuracy is measured by benchmarks/bench_learn.py)
    learned, refined = summary["learning_predicted"], summary["learning_refined"]
    assert 0 <= learned["median_deg"] <= 180 and 0 <= refined["median_deg"] <= 180
    assert len(read_star(out / "learning" / "refined" / "particles.star")) == 120
    assert summary["learning_refined_at_chance"] in (True, False)  # refine's verdict on its start is carried
    assert len(read_star(out / "learning" / "predicted" / "kept.star")) == 90
    assert (out / "learning" / "model" / "training.png").is_file() and "learning/model/training.png" in report


def test_demo_settings_are_checked():
    with pytest.raises(UserError, match="at least"):
        DemoSettings(n=MIN_PARTICLES - 1)
    for bad in ({"snr": 0.0}, {"snr": float("nan")}, {"learn_minutes": -1.0}, {"learn_minutes": float("inf")}):
        with pytest.raises(UserError):
            DemoSettings(**bad)
    assert DemoSettings(snr=float("inf"), learn_minutes=0).snr == float("inf")
    step = DemoStep("fsc", ("a.mrc", "b.mrc", "--out", "f"), Path("f"))
    assert step.command_line == "cryopose fsc a.mrc b.mrc --out f" and not step.resumed


def test_demo_refuses_few_particles_before_importing_torch(tmp_path):
    code = (
        "import sys\nfrom cryopose.cli.main import main\n"
        f"try:\n    main(['demo', '--n', '{MIN_PARTICLES - 1}', '--out', 'o'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.split() == ["2", "False"], (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1
    assert f"'--n': {MIN_PARTICLES - 1} is not in the range x>={MIN_PARTICLES}" in result.stderr
    assert not (tmp_path / "o").exists()
