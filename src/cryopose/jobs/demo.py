"""The ``cryopose demo`` job: the whole pipeline on the bundled map (EMD-1832, CC0), with a report.

``run_demo`` simulates particles with CTF, shifts and noise; reconstructs them with
gold-standard halves and measures the FSC against the true map; validates a mixed set and
prunes it; aligns a moved map and carries its poses along; trains a pose estimator on 80% of
the particles, predicts the rest and refines those poses locally; and writes report.md,
summary.json and figures. Each step is the job of a command (``run_simulate``,
``run_reconstruct``, ...) writing into a folder of its own under the demo's folder. The
demo records each step it finishes (``PROGRESS``), so a rerun after an interruption skips
the finished steps and the interrupted one resumes from its own finished work, as that
command does. The data the demo makes from its simulated particles (a mixed set for
validation, a moved map for alignment, a train/test split) are made here too.

torch and ``cryopose.io`` are imported inside the functions, so that the command line reads
``MIN_PARTICLES`` and refuses a bad option without importing them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cryopose.errors import UserError

if TYPE_CHECKING:
    import torch

    from cryopose.io.checkpoints import Checkpoint

__all__ = [
    "MIN_PARTICLES",
    "ATTRIBUTION",
    "OUTPUTS",
    "PROGRESS",
    "DemoSettings",
    "DemoStep",
    "run_demo",
    "bundled_map_path",
    "make_mixed_set",
    "make_moved_map",
    "split_particles",
    "pose_error_summary",
]

BUNDLED_MAP = "emd_1832.map"
ATTRIBUTION = "EMD-1832 (EMDB, CC0), 64^3 at 5.7 A/px"
MIN_PARTICLES = 60
"""Fewest particles the demo simulates (its validation and learning steps split them further)."""
OUTPUTS = ("report.md", "summary.json", "maps.png", "particles.png", "validation_fsc.png")
PROGRESS = ".cryopose_demo.pt"
"""The steps an interrupted demo finished, with their results (removed when the demo completes)."""

log = logging.getLogger("cryopose")

Progress = Callable[[int, int], None]
ProgressFactory = Callable[[str, str], AbstractContextManager[Progress]]


@dataclass(frozen=True)
class DemoSettings:
    """n: particles to simulate (at least ``MIN_PARTICLES``); snr: their signal-to-noise
    ratio (inf: no noise); seed: of the simulation, the mixed set, the moved map and the
    training; learn_minutes: training time of the learning step (0 skips the step)."""

    n: int = 3000
    snr: float = 0.1
    seed: int = 0
    learn_minutes: float = 3.0

    def __post_init__(self) -> None:
        if int(self.n) < MIN_PARTICLES:
            raise UserError(f"the demo needs at least {MIN_PARTICLES} particles, not {self.n}", option="n")
        if not self.snr > 0:  # NaN too
            raise UserError(f"the signal-to-noise ratio must be positive (inf: no noise), not {self.snr}", option="snr")
        if not (math.isfinite(self.learn_minutes) and self.learn_minutes >= 0):
            raise UserError(
                f"the training time must be a non-negative number of minutes (0 skips learning), not "
                f"{self.learn_minutes}",
                option="learn-minutes",
            )


@dataclass(frozen=True)
class DemoStep:
    """One step of the demo: the cryopose ``command`` it runs, the arguments that run the
    same step on the command line (``args``, shown to the user), its output folder, and
    whether an earlier, interrupted run of the demo finished it (``resumed``: not run again)."""

    command: str
    args: tuple[str, ...]
    out: Path
    resumed: bool = False

    @property
    def command_line(self) -> str:
        """``cryopose COMMAND ARGS...`` as the user would type it (paths unquoted)."""
        return f"cryopose {self.command} {' '.join(self.args)}"


def bundled_map_path() -> Path:
    """Path of the bundled CC0 map (EMD-1832)."""
    return Path(str(resources.files("cryopose") / "data" / BUNDLED_MAP))


def _plain(value: Any) -> Any:
    """``value`` with numpy/torch values as Python numbers and lists and paths as strings
    (what a checkpoint holds; NaN stays NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (Path, str)):
        return str(value)  # a str subclass (Symmetry) as a plain str
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    return value


def _identity(path: Path) -> dict[str, Any] | None:
    from cryopose.io.checkpoints import file_identity

    return file_identity(path) if path.is_file() else None


@dataclass
class _Demo:
    """What every section of one demo run needs, how it tells the caller about its steps,
    and the steps finished so far (``done``, in order, saved in ``checkpoint`` after each)."""

    out: Path
    true_map: Path
    settings: DemoSettings
    device: torch.device
    force: bool
    announce: Callable[[DemoStep], None] | None
    report: Callable[[DemoStep, Any], None] | None
    progress: ProgressFactory | None
    stage: Callable[[str], None] | None
    checkpoint: Checkpoint
    done: list[dict[str, Any]] = field(default_factory=list)
    n_simulated: int = 0
    figures: list[Callable[[], None]] = field(default_factory=list)
    _next: int = 0

    @property
    def sim(self) -> Path:
        return self.out / "simulated"

    def _finished(self, key: list[str], files: list[Path]) -> tuple[bool, Any]:
        """(True, its result) when an earlier run finished this step (same key, its files
        unchanged since); else (False, None), and the earlier run's steps from here on are
        forgotten (they are done again)."""
        i = self._next
        if i < len(self.done):
            record = self.done[i]
            if record["key"] == key and record["files"] == [_identity(f) for f in files]:
                self._next += 1
                return True, record["result"]
            del self.done[i:]
        return False, None

    def _record(self, key: list[str], files: list[Path], result: Any) -> Any:
        plain = _plain(result)
        self.done.append({"key": key, "files": [_identity(f) for f in files], "result": plain})
        self._next = len(self.done)
        self.checkpoint.save({"steps": self.done})
        return plain

    def step(
        self,
        command: str,
        args: list[str],
        out: Path,
        work: Callable[[Progress | None], Any],
        files: list[Path],
        unit: str | None = "particle",
    ) -> Any:
        """Run one command's job: announce it, run ``work(progress)`` (with a progress
        callback in ``unit`` when the caller gives one and ``unit`` is not None), record it
        with the identity of ``files`` (what later steps read) and report what it returned.
        A step an interrupted run finished is announced and reported, not run again."""
        key = [command, *args]
        resumed, result = self._finished(key, files)
        step = DemoStep(command, tuple(args), out, resumed=resumed)
        if self.announce is not None:
            self.announce(step)
        if not resumed:
            bar: AbstractContextManager[Progress | None] = (
                self.progress(command, unit) if self.progress is not None and unit is not None else nullcontext(None)
            )
            with bar as update:
                result = work(update)
            self._record(key, files, result)
        if self.report is not None:
            self.report(step, result)
        return result

    def data(self, name: str, work: Callable[[], Any], files: list[Path]) -> Any:
        """Make data for the next steps (``work()``, writing ``files``), unless an interrupted
        run made them; returns ``work``'s result as plain values (lists, not arrays)."""
        key = [name]
        resumed, result = self._finished(key, files)
        return result if resumed else self._record(key, files, work())


def run_demo(
    out: Path,
    settings: DemoSettings | None = None,
    device: torch.device | str = "cpu",
    force: bool = False,
    announce: Callable[[DemoStep], None] | None = None,
    report: Callable[[DemoStep, Any], None] | None = None,
    progress: ProgressFactory | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written as summary.json).

    ``announce(step)`` is called before each step and ``report(step, result)`` after it, with
    what its job returned (the summary of ``run_simulate``, ``run_reconstruct``,
    ``run_validate``, ``run_train``, ``run_predict``, ``run_refine``; the summary of
    ``run_fsc``; the entries of ``run_align_maps``); ``progress(command, unit)`` gives a
    context manager yielding the progress callback of the steps that report progress;
    ``stage(text)`` receives the training's phases. Files in ``out`` that cryopose did not
    write are replaced only with ``force`` (and only in the folders of the simulation, the
    reconstruction and its FSC).

    An interrupted demo keeps the steps it finished (in ``out/.cryopose_demo.pt``); rerun
    with the same settings, it does not run them again (``DemoStep.resumed``) unless their
    files changed since, and the interrupted step resumes from its own finished work. A
    demo that completes starts afresh when rerun, as the commands do."""
    import torch

    from cryopose.io.checkpoints import Checkpoint, file_identity
    from cryopose.io.outputs import output_folder

    t0 = time.perf_counter()
    settings = settings or DemoSettings()
    out = Path(out)
    true_map = bundled_map_path()
    with output_folder(out, outputs=OUTPUTS, force=force):
        checkpoint = Checkpoint(out / PROGRESS, {"map": file_identity(true_map), **asdict(settings)})
        state = checkpoint.load()
        done = list(state["steps"]) if state is not None else []
        if done:
            log.info("resuming: %d steps of the demo were finished by an earlier run in %s", len(done), out)
        demo = _Demo(
            out, true_map, settings, torch.device(device), force, announce, report, progress, stage, checkpoint, done
        )
        sections, summary = _reconstruction_section(demo)
        for section in SECTIONS:
            lines, values = section(demo)
            sections += lines
            summary.update(values)
        # the demo's own files are written last: an interrupted demo leaves only its steps' folders and its
        # checkpoint, which a rerun resumes (figures left unrecorded could not be replaced without force)
        for figure in demo.figures:
            figure()
        summary["seconds"] = time.perf_counter() - t0
        _write_report(out, sections, summary)
        checkpoint.remove()
    return summary


def _write_report(out: Path, sections: list[str], summary: dict[str, Any]) -> None:
    from cryopose.io.atomic import write_json_atomic, write_text_atomic

    write_text_atomic(out / "report.md", "\n".join(sections) + "\n")
    write_json_atomic(out / "summary.json", summary)


def _reconstruction_section(demo: _Demo) -> tuple[list[str], dict[str, Any]]:
    """Simulate particles, reconstruct them and compare the map with the truth: the report's
    head and first section, and the summary's first values."""
    from cryopose.io.mrc import open_stack, read_map
    from cryopose.io.plots import plot_central_slices, plot_image_row
    from cryopose.jobs.fsc import run_fsc
    from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct
    from cryopose.jobs.simulate import SimulateSettings, run_simulate

    s, out, true_map, dev, force = demo.settings, demo.out, demo.true_map, demo.device, demo.force
    sim, rec, fsc_true = demo.sim, out / "reconstruction", out / "fsc_vs_truth"
    common = ["--device", str(dev), *(["--force"] if force else [])]
    sim_settings = SimulateSettings(n=s.n, snr=s.snr, defocus=(1.0, 2.5), max_shift=15.0, seed=s.seed)
    simulated = demo.step(
        "simulate",
        [
            "--map",
            str(true_map),
            "--n",
            str(s.n),
            "--snr",
            str(s.snr),
            "--max-shift",
            "15",
            "--defocus",
            "1.0",
            "2.5",
            "--seed",
            str(s.seed),
            "--out",
            str(sim),
            *common,
        ],
        sim,
        lambda p: run_simulate(true_map, sim, sim_settings, device=dev, progress=p, force=force),
        files=[sim / "particles.star", sim / "particles.mrcs"],
    )
    demo.n_simulated = int(simulated["n_particles"])
    rec_summary = demo.step(
        "reconstruct",
        [str(sim / "particles.star"), "--out", str(rec), *common],
        rec,
        lambda p: run_reconstruct(
            sim / "particles.star", rec, ReconstructSettings(), device=dev, progress=p, force=force
        ),
        files=[rec / "map.mrc", rec / "fsc.png"],
    )
    truth_summary = demo.step(
        "fsc",
        [str(rec / "map.mrc"), str(true_map), "--out", str(fsc_true), *common],
        fsc_true,
        lambda _: run_fsc(rec / "map.mrc", true_map, out=fsc_true, device=dev, force=force)[1],
        files=[fsc_true / "fsc.png"],
        unit=None,
    )

    def figures() -> None:
        truth, _ = read_map(true_map)
        recon, _ = read_map(rec / "map.mrc")
        plot_central_slices([("true map", truth), ("reconstruction", recon)], out / "maps.png")
        with open_stack(sim / "particles.mrcs") as stack:
            plot_image_row(
                stack[np.arange(min(8, len(stack)))], out / "particles.png", "simulated particles (CTF, shifts, noise)"
            )

    demo.figures.append(figures)
    summary = {
        "map": ATTRIBUTION,
        "n_particles": s.n,
        "snr": s.snr,
        "half_map_resolution_0143": rec_summary["resolution_0143"],
        "half_map_resolution_05": rec_summary["resolution_05"],
        "resolution_vs_truth_0143": truth_summary["resolution_0143"],
        "resolution_vs_truth_05": truth_summary["resolution_05"],
        "pcc_vs_truth": truth_summary["pcc"],
    }
    lines = [
        "# cryopose demo report",
        "",
        f"Map: {ATTRIBUTION}. {s.n} particles simulated at SNR {s.snr} with CTF (defocus 1.0-2.5 µm) and origins up "
        "to 15 Å.",
        "",
        "## Reconstruction",
        "",
        "![particles](particles.png)",
        "",
        f"- half-map FSC resolution: {rec_summary['resolution_0143']:.2f} Å (0.143), "
        f"{rec_summary['resolution_05']:.2f} Å (0.5)",
        f"- against the true map: {truth_summary['resolution_0143']:.2f} Å (0.143), "
        f"{truth_summary['resolution_05']:.2f} Å (0.5), PCC {truth_summary['pcc']:.3f}",
        "",
        "![maps](maps.png)",
        "",
        "![half-map FSC](reconstruction/fsc.png) ![FSC against the truth](fsc_vs_truth/fsc.png)",
        "",
    ]
    return lines, summary


def _validation_section(demo: _Demo) -> tuple[list[str], dict[str, Any]]:
    """Validate a mixed set, prune it, and compare reconstructions from all and pruned."""
    from cryopose.io.atomic import make_output_folder
    from cryopose.io.plots import plot_fsc_curves
    from cryopose.io.star import read_star
    from cryopose.jobs.fsc import run_fsc
    from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct
    from cryopose.jobs.validate import ValidationOptions, run_validate

    out, true_map, dev = demo.out, demo.true_map, demo.device
    val = make_output_folder(out / "validation")
    n_bad = min(900, demo.n_simulated) // 6
    n_good = 4 * n_bad
    seed = demo.settings.seed
    kinds = np.array(
        demo.data(
            "mixed set",
            lambda: make_mixed_set(demo.sim, val, n_good, n_bad, n_bad, seed),
            files=[val / "mixed.star", val / "mixed.mrcs"],
        )
    )
    common = ["--device", str(dev)]
    vsum = demo.step(
        "validate",
        ["--map", str(true_map), "--particles", str(val / "mixed.star"), "--out", str(val), *common],
        val,
        lambda p: run_validate([true_map], val / "mixed.star", val, ValidationOptions(), device=dev, progress=p),
        files=[val / "particles.star", val / "pruned.star", val / "soft_validation.png"],
    )
    curves, res = [], {}
    for name, star in (("all", val / "particles.star"), ("pruned", val / "pruned.star")):
        rec, fsc_out = val / f"reconstruct_{name}", val / f"fsc_{name}"
        demo.step(
            "reconstruct",
            [str(star), "--out", str(rec), *common],
            rec,
            lambda p: run_reconstruct(star, rec, ReconstructSettings(), device=dev, progress=p),
            files=[rec / "map.mrc"],
        )
        summary = demo.step(
            "fsc",
            [str(rec / "map.mrc"), str(true_map), "--out", str(fsc_out), *common],
            fsc_out,
            lambda _: run_fsc(rec / "map.mrc", true_map, out=fsc_out, device=dev)[1],
            files=[fsc_out / "fsc.png"],
            unit=None,
        )
        curves.append((f"{name} particles vs true map", np.array(summary["frequency"]), np.array(summary["fsc"])))
        res[name] = summary
    demo.figures.append(
        lambda: plot_fsc_curves(curves, out / "validation_fsc.png", title="Reconstruction from all vs pruned particles")
    )
    scored = read_star(val / "particles.star").table
    aligned = scored["cryoposeAligned"].to_numpy().astype(int) == 1
    kept = {k: float(aligned[kinds == k].mean()) for k in ("good", "noise", "wrong_pose")}
    lines = [
        "## Alignment quality (Vargas et al. 2017)",
        "",
        f"A mixed set: {n_good} good particles, {n_bad} pure-noise images, {n_bad} true particles with random poses "
        f"(true fraction of good: {n_good / len(kinds):.2f}). `cryopose validate` found Q = {vsum['Q']:.2f} "
        f"(precision passed by {vsum['precision_fraction']:.2f}, accuracy by {vsum['accuracy_fraction']:.2f}).",
        f"Kept after pruning: good {kept['good']:.0%}, noise {kept['noise']:.0%}, "
        f"wrong poses {kept['wrong_pose']:.0%}.",
        "",
        "![soft validation](validation/soft_validation.png)",
        "",
        f"Reconstruction against the true map: all particles {res['all']['resolution_05']:.1f} Å (FSC 0.5), "
        f"pruned {res['pruned']['resolution_05']:.1f} Å; PCC {res['all']['pcc']:.3f} -> {res['pruned']['pcc']:.3f}.",
        "",
        "![all vs pruned](validation_fsc.png)",
        "",
    ]
    values = {
        "validation_Q": vsum["Q"],
        "validation_true_good_fraction": n_good / len(kinds),
        "validation_kept": kept,
        "validation_resolution_05_all": res["all"]["resolution_05"],
        "validation_resolution_05_pruned": res["pruned"]["resolution_05"],
    }
    return lines, values


def _alignment_section(demo: _Demo) -> tuple[list[str], dict[str, Any]]:
    """Move the map (rotate, shift, flip the hand) and its particles, then align both back."""
    from cryopose.align.map_alignment import MapAlignmentSettings, transform_angle_deg
    from cryopose.io.atomic import make_output_folder
    from cryopose.jobs.align_maps import run_align_maps
    from cryopose.jobs.fsc import run_fsc
    from cryopose.jobs.reconstruct import ReconstructSettings, run_reconstruct

    out, true_map, dev = demo.out, demo.true_map, demo.device
    ali = make_output_folder(out / "map_alignment")
    rot, m_true, t_true = (
        np.array(a)
        for a in demo.data(
            "moved map",
            lambda: make_moved_map(true_map, demo.sim, ali, demo.settings.seed),
            files=[ali / "moved.mrc", ali / "moved_particles.star"],
        )
    )
    moved, moved_particles = ali / "moved.mrc", ali / "moved_particles.star"
    entries = demo.step(
        "align-maps",
        [
            "--ref",
            str(true_map),
            str(moved),
            "--particles",
            str(moved_particles),
            "--out",
            str(ali),
            "--device",
            str(dev),
        ],
        ali,
        lambda _: run_align_maps(
            true_map, [moved], ali, MapAlignmentSettings(), particles=[moved_particles], device=dev
        ),
        files=[ali / "particles_moved.star", ali / "difference_moved.png"],
        unit=None,
    )
    entry = entries[0]
    # the alignment undoes the move: moved(M y + t) = V(y) means M ~ m_true^-1
    m_found = np.array(entry["rotation"])
    residual = m_found @ m_true if entry["hand_flipped"] else None
    angle_error = transform_angle_deg(residual) if residual is not None else float("nan")
    rec, fsc_out = ali / "reconstruction", ali / "fsc_vs_truth"
    carried = ali / "particles_moved.star"
    demo.step(
        "reconstruct",
        [str(carried), "--out", str(rec), "--device", str(dev)],
        rec,
        lambda p: run_reconstruct(carried, rec, ReconstructSettings(), device=dev, progress=p),
        files=[rec / "map.mrc"],
    )
    fsc = demo.step(
        "fsc",
        [str(rec / "map.mrc"), str(true_map), "--out", str(fsc_out), "--device", str(dev)],
        fsc_out,
        lambda _: run_fsc(rec / "map.mrc", true_map, out=fsc_out, device=dev)[1],
        files=[fsc_out / "fsc.png"],
        unit=None,
    )
    lines = [
        "## Map alignment and poses carried along",
        "",
        f"The map was rotated by {transform_angle_deg(rot):.1f}°, shifted by {np.linalg.norm(t_true):.1f} Å and "
        f"hand-flipped; its particles' poses were moved with it. `cryopose align-maps` found the hand "
        f"({'right' if entry['hand_flipped'] else 'WRONG'}), with a rotation error of {angle_error:.2f}° "
        f"(score {entry['score']:.3f}).",
        f"Reconstructing from the updated particles gives {fsc['resolution_05']:.1f} Å (FSC 0.5) against the original "
        f"map (PCC {fsc['pcc']:.3f}): the poses followed their map back.",
        "",
        "![difference](map_alignment/difference_moved.png)",
        "",
    ]
    return lines, {
        "alignment_hand_right": bool(entry["hand_flipped"]),
        "alignment_rotation_error_deg": angle_error,
        "alignment_reconstruction_pcc_vs_truth": fsc["pcc"],
    }


def _learning_section(demo: _Demo) -> tuple[list[str], dict[str, Any]]:
    """Train a grid estimator on 80% of the simulated particles for ``learn_minutes`` (0:
    skip), predict the other 20%, then refine the predicted poses against the true map."""
    from cryopose.io.atomic import make_output_folder
    from cryopose.jobs.predict import PredictSettings, run_predict
    from cryopose.jobs.refine import RefineSettings, run_refine
    from cryopose.jobs.train import TrainJobSettings, run_train
    from cryopose.learn.augment import AugmentSettings
    from cryopose.learn.models import default_network
    from cryopose.learn.preprocess import ImageSettings
    from cryopose.learn.train import TrainSettings

    out, true_map, dev, seed = demo.out, demo.true_map, demo.device, demo.settings.seed
    learn_minutes = float(demo.settings.learn_minutes)
    if learn_minutes == 0:
        return [], {}
    learn = make_output_folder(out / "learning")
    n_sim = demo.n_simulated
    n_train = int(0.8 * n_sim)
    train_star, test_star = (
        Path(p)
        for p in demo.data(
            "split",
            lambda: split_particles(demo.sim, learn, n_train),
            files=[learn / "train.star", learn / "test.star"],
        )
    )
    common = ["--device", str(dev)]
    model, predicted_dir, refined_dir = learn / "model", learn / "predicted", learn / "refined"
    # the settings of `cryopose train --model grid --image-size 32 --minutes M --seed S` (its defaults otherwise)
    network = {**default_network("grid"), "channels": (16, 32, 64, 128), "grid_order": 2, "auxiliary_grid": True}
    train_settings = TrainJobSettings(
        train=TrainSettings(
            network=network, minutes=learn_minutes, batch_size=64, learning_rate=2e-3, pair_sampling="random", seed=seed
        ),
        image=ImageSettings(image_size=32, crop_factor=1.0, ctf_correction="phase_flip"),
        augment=AugmentSettings(in_plane=True, max_shift_angstrom=0.0),
        val_fraction=0.1,
        halves=False,
    )
    demo.step(
        "train",
        [
            "--particles",
            str(train_star),
            "--out",
            str(model),
            "--model",
            "grid",
            "--image-size",
            "32",
            "--minutes",
            f"{learn_minutes:g}",
            "--seed",
            str(seed),
            *common,
        ],
        model,
        lambda p: run_train(train_star, model, train_settings, device=dev, progress=p, stage=demo.stage),
        files=[model / "model.pt", model / "training.png"],
        unit="step",
    )
    predict_summary = demo.step(
        "predict",
        [
            "--model",
            str(model / "model.pt"),
            "--particles",
            str(test_star),
            "--out",
            str(predicted_dir),
            "--keep-fraction",
            "0.75",
            *common,
        ],
        predicted_dir,
        lambda p: run_predict(
            model / "model.pt", test_star, predicted_dir, PredictSettings(keep_fraction=0.75), device=dev, progress=p
        ),
        files=[predicted_dir / "particles.star"],
    )
    refine_summary = demo.step(
        "refine",
        [
            "--particles",
            str(predicted_dir / "particles.star"),
            "--map",
            str(true_map),
            "--out",
            str(refined_dir),
            "--iterations",
            "3",
            *common,
        ],
        refined_dir,
        lambda p: run_refine(
            predicted_dir / "particles.star",
            true_map,
            refined_dir,
            None,
            RefineSettings(iterations=3),
            device=dev,
            progress=p,
        ),
        files=[refined_dir / "particles.star"],
    )
    predicted = pose_error_summary(predicted_dir / "particles.star", test_star)
    kept = predict_summary["against_input_poses"]
    refined = pose_error_summary(refined_dir / "particles.star", test_star)
    chance = refine_summary["chance_reasons"]
    n_test = n_sim - n_train
    lines = [
        "## Learning poses, then refining them",
        "",
        f"`cryopose train` fitted an SO(3)-grid estimator to {n_train} particles in {learn_minutes:g} min "
        f"(32 px); `cryopose predict` gave the other {n_test} poses from their images alone: median error "
        f"{predicted['median_deg']:.1f}°, mean {predicted['mean_deg']:.1f}° "
        f"({predicted['under_10_deg']:.0%} under 10°). "
        f"The most confident 75% (kept.star): median {kept['kept_median_deg']:.1f}°, "
        f"mean {kept['kept_mean_deg']:.1f}°.",
        f"`cryopose refine` then searched near each predicted pose against the map: median "
        f"{refined['median_deg']:.1f}°, mean {refined['mean_deg']:.1f}°, origins "
        f"{predicted['origin_median_angstrom']:.1f} -> {refined['origin_median_angstrom']:.1f} Å. A few minutes of CPU "
        "training gives a start that local refinement finishes; longer training (see the README's benchmark) gives a "
        "better start."
        + (
            f" Here the refinement said its result looks like chance ({'; '.join(chance)}): the start was too far off."
            if chance
            else ""
        ),
        "",
        "![training curve](learning/model/training.png)",
        "",
    ]
    values = {
        "learning_predicted": predicted,
        "learning_kept_median_deg": kept["kept_median_deg"],
        "learning_refined": refined,
        "learning_refined_at_chance": bool(chance),
    }
    return lines, values


SECTIONS: list[Callable[[_Demo], tuple[list[str], dict[str, Any]]]] = [
    _validation_section,
    _alignment_section,
    _learning_section,
]
"""The sections after the reconstruction, in order: each runs its steps and returns its
markdown lines and summary values."""


# ---------------------------------------------------------------------- the demo's data
def make_mixed_set(sim: Path, out: Path, n_good: int, n_noise: int, n_wrong: int, seed: int) -> np.ndarray:
    """Good particles, pure-noise images and true particles with random poses, taken from
    sim/particles.star and written as out/mixed.star + out/mixed.mrcs; returns each
    particle's kind ("good", "noise", "wrong_pose")."""
    import torch

    from cryopose.geometry.rotations import random_rotations
    from cryopose.io.mrc import ParticleImages, write_stack
    from cryopose.io.star import read_star, write_star

    ps = read_star(sim / "particles.star")
    total = n_good + n_noise + n_wrong
    subset = ps.subset(np.arange(total))
    if subset.rotations is None:
        raise UserError(f"{sim / 'particles.star'} has no poses; the mixed set needs simulated particles with poses")
    images = ParticleImages(subset).read(np.arange(total))
    rng = np.random.default_rng(seed)
    kinds = np.array(["good"] * n_good + ["noise"] * n_noise + ["wrong_pose"] * n_wrong)
    noise = kinds == "noise"
    images[noise] = rng.normal(0.0, images[~noise].std(), size=images[noise].shape).astype(np.float32)
    rotations = subset.rotations.copy()
    wrong = kinds == "wrong_pose"
    rotations[wrong] = random_rotations(int(wrong.sum()), torch.Generator().manual_seed(seed)).numpy()
    names = [f"{i + 1:06d}@mixed.mrcs" for i in range(total)]
    mixed = subset.with_poses(rotations=rotations).with_columns(rlnImageName=names, cryoposeDemoKind=kinds)
    mixed = replace(mixed, source_dir=Path(out).resolve())  # the new names resolve from out
    write_stack(out / "mixed.mrcs", images, float(ps.pixel_size[0]))
    write_star(mixed, out / "mixed.star")
    return kinds


def make_moved_map(true_map: Path, sim: Path, out: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate, shift and hand-flip the map into out/moved.mrc and move the poses of
    sim/particles.star with it into out/moved_particles.star. Returns (the rotation R,
    the transform M = R J, t in Å) with moved(y) = true(M y + t)."""
    import torch

    from cryopose.align.map_alignment import apply_transform, transform_poses
    from cryopose.geometry.rotations import random_rotations
    from cryopose.io.mrc import read_map, write_map
    from cryopose.io.star import read_star, write_star

    volume, apix = read_map(true_map)
    rot = random_rotations(1, torch.Generator().manual_seed(seed + 7))[0].numpy()
    m_true = rot @ np.diag([1.0, 1.0, -1.0])  # improper: a hand flip
    t_true = np.array([4.0, -3.0, 2.5]) * apix
    moved = apply_transform(torch.from_numpy(volume), m_true, t_true, apix)
    write_map(out / "moved.mrc", moved.numpy(), apix)
    ps = read_star(sim / "particles.star")
    rotations, shifts = transform_poses(ps.rotations, ps.shifts_angstrom, m_true, t_true)
    write_star(ps.with_poses(rotations=rotations, shifts_angstrom=shifts), out / "moved_particles.star")
    return rot, m_true, t_true


def split_particles(sim: Path, out: Path, n_train: int) -> tuple[Path, Path]:
    """sim/particles.star split into out/train.star (the first n_train particles) and
    out/test.star (the rest), image names relinked; returns their paths."""
    from cryopose.io.star import read_star, write_star

    ps = read_star(sim / "particles.star")
    if not 0 < n_train < len(ps):
        raise ValueError(f"cannot split {len(ps)} particles into {n_train} for training and the rest for testing")
    write_star(ps.subset(np.arange(n_train)), out / "train.star")
    write_star(ps.subset(np.arange(n_train, len(ps))), out / "test.star")
    return out / "train.star", out / "test.star"


def pose_error_summary(predicted_star: Path, truth_star: Path) -> dict[str, float]:
    """Median and mean angular error (deg) and median origin error (Å) of predicted_star's
    poses against truth_star's (same particles, same order)."""
    import torch

    from cryopose.geometry.distances import rotation_distance
    from cryopose.io.star import read_star

    pred, truth = read_star(predicted_star).to_tensors(ctf=False), read_star(truth_star).to_tensors(ctf=False)
    if pred.rotations is None or truth.rotations is None:
        raise UserError(f"{predicted_star} and {truth_star} must both have poses to compare them")
    err = torch.rad2deg(rotation_distance(pred.rotations, truth.rotations))
    shift = (pred.shifts_angstrom - truth.shifts_angstrom).norm(dim=-1)
    return {
        "median_deg": float(err.median()),
        "mean_deg": float(err.mean()),
        "under_10_deg": float((err < 10).double().mean()),
        "origin_median_angstrom": float(shift.median()),
    }
