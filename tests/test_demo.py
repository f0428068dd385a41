"""`cryopose demo` runs end to end and its numbers are right (small run)."""

import json

import pytest

from cryopose.cli.main import main
from cryopose.io import read_star


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), "--n", "600", "--learn-minutes", "0.25"])
    assert exc.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    for figure in ("maps.png", "particles.png", "validation_fsc.png", "validation/soft_validation.png",
                   "map_alignment/difference_moved.png", "reconstruction/fsc.png"):
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
