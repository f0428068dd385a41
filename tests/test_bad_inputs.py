"""The standing bad-input matrix: every command against every broken input or option.

Each case must end with a non-zero exit and ONE line on stderr, "Error: ...", naming the
problem (and where it helps, the fix); no traceback; the inputs byte-identical; nothing
under the command's final output names. Cases run in-process (fast); they fail before any
computing. Good inputs with awkward names (spaces, non-ASCII) must work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cli_helpers import BUNDLED, run

OUTPUTS = {
    "simulate": ["particles.star", "particles.mrcs"],
    "reconstruct": ["map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "summary.json"],
    "fsc": ["fsc.csv", "fsc.png", "summary.json"],
    "validate": ["particles.star", "pruned.star", "summary.json", "soft_validation.png"],
    "align-maps": ["aligned_map.mrc", "transforms.json", "fsc.png", "align_maps.log"],
    "convert": [],
    "demo": ["report.md", "summary.json"],
    "evaluate": ["metrics.json", "per_particle.star", "report.md", "errors.png", "directions.png", "gt_half1.mrc"],
    "refine": ["particles.star", "half1.mrc", "half2.mrc", "map.mrc", "fsc.csv", "fsc.png", "summary.json"],
    "train": ["model.pt", "training.csv", "training.png", "summary.json"],
    "predict": ["particles.star", "summary.json", "kept.star"],
}
TINY_TRAIN = [
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--val-fraction",
    "0",
    "--image-size",
    "16",
    "--channels",
    "4",
    "--grid-order",
    "1",
]
FAST_VALIDATE = ["--angular-sampling", "20", "--noise-draws", "10", "--resolution", "20"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A good workspace: 6 simulated particles (64 px) with a map and a mask."""
    root = tmp_path_factory.mktemp("template")
    with pytest.raises(SystemExit) as exc:
        from cryopose.cli.main import main

        main(["simulate", "--map", str(BUNDLED), "--n", "6", "--snr", "1", "--out", str(root)])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["train", "--particles", str(root / "particles.star"), "--out", str(root / "trained"), *TINY_TRAIN])
    assert exc.value.code == 0
    shutil.copy(BUNDLED, root / "map.mrc")
    vol = mrcfile.read(BUNDLED)
    mask = (vol > vol.mean()).astype(np.float32)
    with mrcfile.new(root / "mask.mrc") as m:
        m.set_data(mask)
        m.voxel_size = 5.7
    (root / ".cryopose_manifest.json").unlink(missing_ok=True)  # the good inputs are the user's
    (root / "trained" / ".cryopose_manifest.json").unlink(missing_ok=True)
    return root


@pytest.fixture
def ws(template, tmp_path) -> Path:
    folder = tmp_path / "ws"
    shutil.copytree(template, folder)
    return folder


def _star_lines(ws: Path) -> list[str]:
    return (ws / "particles.star").read_text().splitlines()


def _edit_star(ws: Path, fn) -> None:
    (ws / "particles.star").write_text("\n".join(fn(_star_lines(ws))) + "\n")


def _replace_names(ws: Path, fn) -> None:
    _edit_star(ws, lambda ls: [fn(x) if "@particles.mrcs" in x else x for x in ls])


def _drop_column(ws: Path, column: str) -> None:
    lines = _star_lines(ws)
    block = lines.index("data_particles")
    header = [i for i, x in enumerate(lines) if i > block and x.startswith("_")]
    idx = next(k for k, i in enumerate(header) if lines[i].split()[0] == f"_{column}")
    out = []
    for i, x in enumerate(lines):
        if i == header[idx]:
            continue
        if i > header[-1] and x.strip() and not x.startswith(("_", "data_", "loop_", "#")):
            fields = x.split()
            del fields[idx]
            x = " ".join(fields)
        out.append(x)
    # header lines keep their names only (the "#n" numbers would be off by one)
    out = [x.split()[0] if x.startswith("_rln") else x for x in out]
    (ws / "particles.star").write_text("\n".join(out) + "\n")


def _write_map(path: Path, data: np.ndarray, voxel: float = 5.7, stack: bool = False) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        if stack:
            m.set_image_stack()
        m.voxel_size = voxel


# ----------------------------------------------------------------------------- cases
# Each case: (id, commands it applies to, setup(ws) -> dict of argument overrides, expected fragment)
def _stack_missing(ws):
    (ws / "particles.mrcs").rename(ws / "renamed.mrcs")


def _stack_short(ws):
    data = mrcfile.read(ws / "particles.mrcs")
    _write_map(ws / "particles.mrcs", data[:3], stack=True)


def _index_zero(ws):
    _replace_names(ws, lambda x: x.replace("000001@", "000000@"))


def _index_past_end(ws):
    _replace_names(ws, lambda x: x.replace("000006@", "000009@"))


def _empty_star(ws):
    (ws / "particles.star").write_text("")


def _optics_only(ws):
    _edit_star(ws, lambda ls: ls[: ls.index("data_particles")])


def _truncated_map(ws):
    data = (ws / "map.mrc").read_bytes()
    (ws / "map.mrc").write_bytes(data[: len(data) // 2])


def _zero_size_map(ws):
    (ws / "map.mrc").write_bytes(b"")


def _header_claims_smaller(ws):
    vol = mrcfile.read(ws / "map.mrc")
    _write_map(ws / "map.mrc", vol)
    with mrcfile.open(ws / "map.mrc", "r+", permissive=True) as m:
        m.header.nx = m.header.ny = m.header.nz = 32


def _image_as_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "map.mrc")[32])


def _non_cubic_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "map.mrc")[:, :, :60])


def _stack_as_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "particles.mrcs"), stack=True)


def _other_box_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "map.mrc")[16:48, 16:48, 16:48])


def _other_pixel_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "map.mrc"), voxel=3.0)


def _zero_map(ws):
    _write_map(ws / "map.mrc", np.zeros((64, 64, 64)))


def _tiny_map(ws):
    _write_map(ws / "map.mrc", np.ones((2, 2, 2)))


def _no_pixel_size_map(ws):
    _write_map(ws / "map.mrc", mrcfile.read(ws / "map.mrc"), voxel=0.0)


def _zero_mask(ws):
    _write_map(ws / "mask.mrc", np.zeros((64, 64, 64)))


def _nan_angle(ws):
    lines = _star_lines(ws)
    block = lines.index("data_particles")
    names = [x.split()[0] for x in lines[block:] if x.startswith("_rln")]
    col = names.index("_rlnAngleTilt")

    def nan_tilt(row: str) -> str:
        fields = row.split()
        fields[col] = "nan"
        return " ".join(fields)

    _replace_names(ws, lambda x: nan_tilt(x) if x.startswith("000002@") else x)


def _one_half_set(ws):
    lines = _star_lines(ws)
    block = lines.index("data_particles")
    last = max(i for i, x in enumerate(lines) if i > block and x.startswith("_"))
    out = [*lines[: last + 1], "_rlnRandomSubset", *lines[last + 1 :]]
    (ws / "particles.star").write_text("\n".join(x + " 1" if "@particles.mrcs" in x else x for x in out) + "\n")


def _half_maps_of_another_box(ws):
    small = mrcfile.read(ws / "map.mrc")[16:48, 16:48, 16:48]
    _write_map(ws / "h1.mrc", small)
    _write_map(ws / "h2.mrc", small)
    return {"extra": ["--half-maps", ws / "h1.mrc", ws / "h2.mrc"]}


def _read_only_out(ws):
    if os.geteuid() == 0:  # root ignores folder permissions: use a read-only file system
        return {"out": Path("/proc/cryopose-ro/sub")}
    (ws / "ro").mkdir()
    os.chmod(ws / "ro", 0o555)
    return {"out": ws / "ro" / "sub"}


def _out_is_file(ws):
    (ws / "afile").write_text("mine\n")
    return {"out": ws / "afile"}


def _out_is_input_folder(ws):
    return {"out": ws}


def _pred_star(ws, fn) -> dict:
    """A prediction file pred.star: the particles' star with its data lines changed by ``fn``."""
    lines = _star_lines(ws)
    (ws / "pred.star").write_text("\n".join(fn(lines)) + "\n")
    return {"pred": ws / "pred.star"}


def _pred_not_in_truth(ws):
    return _pred_star(ws, lambda ls: [x.replace("000003@", "000099@") for x in ls])


def _pred_twice(ws):
    return _pred_star(ws, lambda ls: ls + [next(x for x in ls if x.startswith("000002@"))])


def _truth_twice(ws):
    _edit_star(ws, lambda ls: ls + [next(x for x in ls if x.startswith("000002@"))])


def _pred_without_truth_columns(ws):
    return {"truth": None}


def _other_box_mask(ws):
    _write_map(ws / "mask.mrc", np.ones((32, 32, 32)))


def _one_half_only(ws):
    lines = _star_lines(ws)
    block = lines.index("data_particles")
    at = max(i for i, x in enumerate(lines) if i > block and x.startswith("_rln")) + 1  # a last column
    lines.insert(at, "_rlnRandomSubset")
    lines = [x + " 1" if "@particles.mrcs" in x else x for x in lines]
    (ws / "particles.star").write_text("\n".join(lines) + "\n")


def _negative_confidence(ws):
    lines = _star_lines(ws)
    block = lines.index("data_particles")
    at = max(i for i, x in enumerate(lines) if i > block and x.startswith("_rln")) + 1  # a last column
    lines.insert(at, "_rlnMaxValueProbDistribution")
    lines = [x + (" -0.5" if x.startswith("000004@") else " 0.9") if "@particles.mrcs" in x else x for x in lines]
    (ws / "particles.star").write_text("\n".join(lines) + "\n")


STAR_COMMANDS = ["reconstruct", "validate", "convert", "evaluate", "refine", "train", "predict"]
MAP_COMMANDS = ["simulate", "fsc", "validate", "align-maps", "evaluate", "refine"]
ALL = ["simulate", "reconstruct", "fsc", "validate", "align-maps", "convert", "evaluate", "refine", "train", "predict"]
IMAGE_COMMANDS = ["reconstruct", "validate", "evaluate", "refine", "train", "predict"]
WRITERS = ["simulate", "reconstruct", "fsc", "validate", "align-maps", "evaluate", "refine", "train", "predict"]

CASES = [
    ("missing stack", IMAGE_COMMANDS, _stack_missing, "particles.mrcs"),
    ("stack shorter than star", IMAGE_COMMANDS, _stack_short, "has 3"),
    ("image index 0", IMAGE_COMMANDS, _index_zero, "start at 1"),
    ("image index past the end", IMAGE_COMMANDS, _index_past_end, "9"),
    ("empty star", STAR_COMMANDS, _empty_star, "particles.star"),
    ("optics only", STAR_COMMANDS, _optics_only, "particle"),
    ("no image names", IMAGE_COMMANDS, lambda ws: _drop_column(ws, "rlnImageName"), "rlnImageName"),
    ("no angles", ["reconstruct", "evaluate", "refine"], lambda ws: _drop_column(ws, "rlnAngleTilt"), "angles"),
    ("no angles to learn from", ["train"], lambda ws: _drop_column(ws, "rlnAngleTilt"), "poses"),
    (
        "no defocus column",
        ["reconstruct", "evaluate", "refine", "train", "predict"],
        lambda ws: _drop_column(ws, "rlnDefocusU"),
        "CTF",
    ),
    ("NaN angle", IMAGE_COMMANDS, _nan_angle, "rlnAngleTilt is not finite"),
    ("truncated map", MAP_COMMANDS, _truncated_map, "map.mrc"),
    ("zero-size map", MAP_COMMANDS, _zero_size_map, "map.mrc"),
    ("header claims 32^3 over 64^3", MAP_COMMANDS, _header_claims_smaller, "map.mrc"),
    ("2-D image as map", MAP_COMMANDS, _image_as_map, "map.mrc"),
    ("particle stack as map", MAP_COMMANDS, _stack_as_map, "map.mrc"),
    ("non-cubic map", MAP_COMMANDS, _non_cubic_map, "map.mrc"),
    ("map box differs from particles", ["validate", "evaluate", "refine"], _other_box_map, "px"),
    ("map pixel size differs from particles", ["validate", "evaluate", "refine"], _other_pixel_map, "A/px"),
    ("all-zero map", ["simulate", "align-maps", "refine"], _zero_map, "zeros"),
    ("2^3 map", ["align-maps"], _tiny_map, "map.mrc"),
    ("map header without pixel size", ["align-maps"], _no_pixel_size_map, "--apix"),
    ("all-zero mask", ["align-maps", "fsc", "evaluate"], _zero_mask, "zeros"),
    ("mask box differs from particles", ["evaluate"], _other_box_mask, "px"),
    ("read-only out", WRITERS, _read_only_out, "cannot"),
    ("out is a file", WRITERS, _out_is_file, "afile"),
    ("out is the input folder", ["validate", "evaluate", "refine"], _out_is_input_folder, "is one of the inputs"),
    ("prediction not in the truth", ["evaluate"], _pred_not_in_truth, "not in the ground truth"),
    ("particle predicted twice", ["evaluate"], _pred_twice, "predicted 2 times"),
    ("truth lists a particle twice", ["evaluate"], _truth_twice, "2 times"),
    ("no truth and no cryoposeTrue columns", ["evaluate"], _pred_without_truth_columns, "--truth"),
    ("a half set is empty", ["evaluate"], _one_half_only, "half set 2"),
    ("negative rlnMaxValueProbDistribution", ["evaluate"], _negative_confidence, "rlnMaxValueProbDistribution"),
    ("out is the input folder", ["reconstruct"], _out_is_input_folder, "map.mrc exists"),
    ("one half set empty", ["refine"], _one_half_set, "half set 2"),
    ("half maps of another box", ["refine"], _half_maps_of_another_box, "px"),
]


def _argv(command: str, ws: Path, overrides: dict) -> list:
    out = overrides.get("out", ws / "out")
    star, mp = ws / "particles.star", ws / "map.mrc"
    extra = overrides.get("extra", [])
    if command == "simulate":
        return ["simulate", "--map", mp, "--n", "4", "--out", out, *extra]
    if command == "reconstruct":
        return ["reconstruct", star, "--out", out, *extra]
    if command == "fsc":
        return ["fsc", mp, BUNDLED, "--mask", ws / "mask.mrc", "--out", out, *extra]
    if command == "validate":
        return ["validate", "--map", mp, "--particles", star, "--out", out, *FAST_VALIDATE, *extra]
    if command == "align-maps":
        return [
            "align-maps",
            "--ref",
            BUNDLED,
            mp,
            "--mask",
            ws / "mask.mrc",
            "--max-angle",
            "0",
            "--no-check-hands",
            "--out",
            out,
            *extra,
        ]
    if command == "convert":
        return ["convert", star, overrides.get("target", ws / "converted.star"), *extra]
    if command == "refine":
        return ["refine", "--particles", star, "--map", mp, "--out", out, *extra]
    if command == "demo":
        return ["demo", "--out", out, *extra]
    if command == "train":
        return ["train", "--particles", star, "--out", out, *TINY_TRAIN, *extra]
    if command == "predict":
        return [
            "predict",
            "--model",
            overrides.get("model", ws / "trained" / "model.pt"),
            "--particles",
            star,
            "--out",
            out,
            *extra,
        ]
    if command == "evaluate":
        truth = overrides.get("truth", star)
        return [
            "evaluate",
            *(["--truth", truth] if truth is not None else []),
            "--pred",
            overrides.get("pred", star),
            "--map",
            mp,
            "--mask",
            ws / "mask.mrc",
            "--out",
            out,
            *extra,
        ]
    raise ValueError(command)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and os.access(p, os.R_OK)
    }


def _check_failure(command: str, ws: Path, overrides: dict, capsys, fragment: str | None) -> str:
    before = _hashes(ws)
    out = Path(overrides.get("out", ws / "out"))
    existed = out.exists()
    code, stdout, err = run(_argv(command, ws, overrides), capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0, (command, stdout, err)
    assert "Traceback" not in err and "Traceback" not in stdout, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    if fragment:
        assert fragment in lines[0], lines[0]
    os.chmod(ws, 0o755)
    for p in ws.rglob("*"):
        if p.is_dir():
            os.chmod(p, 0o755)
    after = {k: v for k, v in _hashes(ws).items()}
    assert {k: after.get(k) for k in before} == before, "an input changed"
    if out.is_dir():
        existing = {p.resolve() for p in ws.rglob("*") if str(p.relative_to(ws)) in before}
        written = [n for n in OUTPUTS[command] if (out / n).exists() and (out / n).resolve() not in existing]
        assert not written, written
        if not existed:
            assert not out.exists(), "the run left the output folder it created"
    if command == "convert":
        assert not Path(overrides.get("target", ws / "converted.star")).exists() or "target" in overrides
    return lines[0]


@pytest.mark.parametrize(
    "case, command", [(c, cmd) for c in CASES for cmd in c[1]], ids=[f"{c[0]}-{cmd}" for c in CASES for cmd in c[1]]
)
def test_broken_inputs(case, command, ws, capsys):
    _, _, setup, fragment = case
    overrides = setup(ws) or {}
    _check_failure(command, ws, overrides, capsys, fragment)


OPTION_CASES = [
    ("simulate", ["--voltage", "0"], "--voltage"),
    ("simulate", ["--amplitude-contrast", "2"], "--amplitude-contrast"),
    ("simulate", ["--particle-diameter", "0"], "--particle-diameter"),
    ("simulate", ["--max-shift", "nan"], "--max-shift"),
    ("simulate", ["--defocus", "nan", "nan"], "--defocus"),
    ("simulate", ["--defocus", "2", "1"], "defocus"),
    ("simulate", ["--box", "1"], "--box"),
    ("simulate", ["--box", "0"], "--box"),
    ("simulate", ["--box", "-64"], "--box"),
    ("simulate", ["--apix", "0"], "--apix"),
    ("simulate", ["--apix", "-2"], "--apix"),
    ("simulate", ["--apix", "0.01"], "memory"),
    ("simulate", ["--snr", "0"], "--snr"),
    ("simulate", ["--sym", "Q7"], "unknown symmetry 'Q7'; give a RELION point group"),
    ("validate", ["--chunk-size", "-1"], "--chunk-size"),
    ("validate", ["--chunk-size", "0"], "--chunk-size"),
    ("validate", ["--noise-draws", "0"], "--noise-draws"),
    ("validate", ["--noise-draws", "-3"], "--noise-draws"),
    ("validate", ["--precision-threshold", "nan"], "--precision-threshold"),
    ("validate", ["--max-shift", "1e5"], "half the box"),
    ("validate", ["--angular-sampling", "0"], "--angular-sampling"),
    ("validate", ["--sym", "Q7"], "I1h-I4h) with --sym"),
    ("reconstruct", ["--chunk-size", "0"], "--chunk-size"),
    ("reconstruct", ["--apix", "-1"], "--apix"),
    ("fsc", ["--apix", "-1"], "--apix"),
    ("align-maps", ["--max-angle", "200"], "--max-angle"),
    ("align-maps", ["--lowpass", "0"], "--lowpass"),
    ("convert", ["--apix", "0"], "--apix"),
    ("demo", ["--n", "0"], "--n"),
    ("evaluate", ["--sym", "Q7"], "Q7"),
    ("evaluate", ["--chunk-size", "0"], "--chunk-size"),
    ("evaluate", ["--apix", "-1"], "--apix"),
    ("evaluate", ["--mask-lowpass", "nan"], "--mask-lowpass"),
    ("evaluate", ["--mask-extend", "-1"], "--mask-extend"),
    ("evaluate", ["--mask-threshold", "inf"], "--mask-threshold"),
    ("refine", ["--sigma-angle", "0"], "--sigma-angle"),
    ("refine", ["--sigma-angle", "120"], "--sigma-angle"),
    ("refine", ["--sigma-angle", "nan"], "--sigma-angle"),
    ("refine", ["--max-shift", "-1"], "--max-shift"),
    ("refine", ["--max-shift", "1e5"], "quarter of the box"),
    ("refine", ["--iterations", "0"], "--iterations"),
    ("refine", ["--score", "chi2"], "--score"),
    ("refine", ["--chunk-size", "0"], "--chunk-size"),
    ("refine", ["--sym", "Q7"], "Q7"),
    ("refine", ["--apix", "0"], "--apix"),
    ("refine", ["--half-maps", "h1.mrc"], "--half-maps"),
    ("refine", ["--ini-high", "10"], "coarser than Nyquist"),
    ("refine", ["--ini-high", "0"], "--ini-high"),
    ("refine", ["--global", "--initial-reference", "poses"], "--initial-reference"),
    ("refine", ["--initial-reference", "model"], "--initial-reference"),
    ("refine", ["--prior", "flat"], "--prior"),
    ("refine", ["--search-angle", "0"], "--search-angle"),
    ("refine", ["--global-sampling", "0"], "--global-sampling"),
    ("refine", ["--global-passes", "0"], "--global-passes"),
    ("train", ["--image-size", "4"], "--image-size"),
    ("train", ["--image-size", "128"], "image size"),
    ("train", ["--crop-factor", "0"], "--crop-factor"),
    ("train", ["--val-fraction", "1"], "--val-fraction"),
    ("train", ["--learning-rate", "nan"], "--learning-rate"),
    ("train", ["--minutes", "-1"], "--minutes"),
    ("train", ["--batch-size", "64"], "fewer than one batch"),
    ("train", ["--channels", "0,8"], "--channels"),
    ("train", ["--model", "vit"], "--model"),
    ("train", ["--sym", "Q7"], "Q7"),
    ("predict", ["--keep-fraction", "0"], "--keep-fraction"),
    ("predict", ["--keep-fraction", "1.5"], "--keep-fraction"),
    ("predict", ["--min-confidence", "nan"], "--min-confidence"),
    ("predict", ["--chunk-size", "0"], "--chunk-size"),
    ("predict", ["--batch-size", "0"], "--batch-size"),
    *[(cmd, ["--device", dev], "device") for cmd in ALL for dev in ("meta", "mps", "xpu")],
]


@pytest.mark.parametrize(
    "command, extra, fragment", OPTION_CASES, ids=[f"{c}-{' '.join(e)}" for c, e, _ in OPTION_CASES]
)
def test_bad_options(command, extra, fragment, ws, capsys):
    message = _check_failure(command, ws, {"extra": extra}, capsys, fragment)
    assert "demo does not have" not in message


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", ALL)
def test_cuda_without_gpu(command, ws, capsys):
    _check_failure(command, ws, {"extra": ["--device", "cuda"]}, capsys, "no CUDA GPU")


def test_simulate_never_writes_over_its_own_input(ws, capsys):
    message = _check_failure(
        "simulate", ws, {"out": ws, "extra": ["--from-star", ws / "particles.star"]}, capsys, "is one of the inputs"
    )
    assert "particles" in message


def test_outputs_of_the_user_are_replaced_only_with_force(ws, capsys):
    out = ws / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}\n')
    _check_failure("fsc", ws, {}, capsys, "--force")
    assert (out / "summary.json").read_text() == '{"mine": true}\n'
    code, _, err = run([*_argv("fsc", ws, {}), "--force"], capsys)
    assert code == 0, err
    # an output cryopose wrote itself is replaced on a rerun without --force
    code, _, err = run(_argv("fsc", ws, {}), capsys)
    assert code == 0, err
    # the converted star: only with --force
    target = ws / "c.star"
    target.write_text("mine\n")
    _check_failure("convert", ws, {"target": target}, capsys, "--force")
    assert target.read_text() == "mine\n"


def test_a_second_run_into_a_busy_folder_is_refused(ws, capsys):
    out = ws / "out"
    out.mkdir()
    (out / ".cryopose.lock").write_text(
        '{"pid": %d, "host": "%s", "command": "cryopose validate"}' % (os.getpid(), os.uname().nodename)
    )
    message = _check_failure("reconstruct", ws, {}, capsys, "another cryopose run")
    assert "validate" in message
    # a lock left by a process that no longer exists is taken over
    (out / ".cryopose.lock").write_text('{"pid": 999999999, "host": "%s", "command": "x"}' % os.uname().nodename)
    code, _, err = run(_argv("fsc", ws, {}), capsys)
    assert code == 0, err
    assert not (out / ".cryopose.lock").exists()


def test_awkward_paths_work(template, tmp_path, capsys):
    folder = tmp_path / "my data ü"
    shutil.copytree(template, folder)
    code, _, err = run(["reconstruct", folder / "particles.star", "--out", folder / "réc out"], capsys)
    assert code == 0, err
    code, _, err = run(["convert", folder / "particles.star", tmp_path / "other place" / "p ü.star"], capsys)
    assert code == 0, err
    code, _, err = run(["reconstruct", tmp_path / "other place" / "p ü.star", "--out", tmp_path / "again"], capsys)
    assert code == 0, err


def test_errors_exit_before_importing_torch(template, tmp_path):
    """Bad options are refused without the seconds that importing torch takes."""
    import subprocess

    code = (
        "import sys\nfrom cryopose.cli.main import main\n"
        "try:\n    main(['simulate', '--map', 'm.mrc', '--n', '0', '--out', 'o'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.split() == ["2", "False"], (result.stdout, result.stderr)
