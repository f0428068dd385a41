"""`cryopose demo` runs end to end and its numbers are right (small run)."""

import json

import pytest

from cryopose.cli.main import main


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), "--n", "600"])
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
