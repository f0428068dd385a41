"""``cryopose demo``: the whole pipeline on the bundled map, with a short report."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import click
import numpy as np

from cryopose.cli.common import Number, device_option, force_option, resolve_device
from cryopose.io.atomic import make_output_folder, read_json, write_json_atomic, write_text_atomic
from cryopose.io.outputs import output_folder
from cryopose.io.mrc import open_stack, read_map
from cryopose.io.plots import plot_central_slices, plot_fsc_curves, plot_image_row
from cryopose.io.star import read_star

BUNDLED_MAP = "emd_1832.map"
ATTRIBUTION = "EMD-1832 (EMDB, CC0), 64^3 at 5.7 A/px"
DEMO_MIN_PARTICLES = 60
OUTPUTS = ("report.md", "summary.json", "maps.png", "particles.png", "validation_fsc.png")


def bundled_map_path() -> Path:
    """Path of the bundled CC0 map (EMD-1832)."""
    return Path(str(resources.files("cryopose") / "data" / BUNDLED_MAP))


def run_command(name: str, args: list[str]) -> None:
    """Run one cryopose command in-process, exactly as on the command line."""
    from cryopose.cli.main import cli

    click.echo(f"$ cryopose {name} {' '.join(args)}")
    cli.main(args=[name, *args], prog_name="cryopose", standalone_mode=False)


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("cryopose_demo"), show_default=True, help="Output folder.")
@click.option("--n", "n", type=click.IntRange(min=DEMO_MIN_PARTICLES), default=3000, show_default=True,
              help=f"Particles to simulate (at least {DEMO_MIN_PARTICLES}).")
@click.option("--snr", type=Number(0.0, low_open=True, allow_inf=True), default=0.1, show_default=True,
              help="Signal-to-noise ratio of the simulated particles (inf: no noise).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--learn-minutes", type=Number(0.0), default=3.0, show_default=True,
              help="Minutes to train the pose estimator of the learning stage (0 skips the stage).")
@force_option
@device_option
def command(out: Path, n: int, snr: float, seed: int, learn_minutes: float, force: bool, device: str) -> None:
    """Run the pipeline on the bundled map (EMD-1832, CC0) and write a report.

    Simulates particles with CTF, shifts and noise; reconstructs them with gold-standard
    halves; measures the FSC against the true map; validates a mixed set and prunes it;
    aligns a moved map and carries its poses along; trains a pose estimator on 80% of the
    particles, predicts the rest and refines those poses locally; writes DIR/report.md
    with figures.

    Example: cryopose demo --out cryopose_demo
    """
    t0 = time.perf_counter()
    resolve_device(device)
    with output_folder(out, outputs=OUTPUTS, force=force):
        true_map = bundled_map_path()
        sim, rec, fsc_true = out / "simulated", out / "reconstruction", out / "fsc_vs_truth"
        common = ["--device", device, *(["--force"] if force else [])]
        run_command("simulate", ["--map", str(true_map), "--n", str(n), "--snr", str(snr), "--max-shift", "15",
                                 "--defocus", "1.0", "2.5", "--seed", str(seed), "--out", str(sim), *common])
        run_command("reconstruct", [str(sim / "particles.star"), "--out", str(rec), *common])
        run_command("fsc", [str(rec / "map.mrc"), str(true_map), "--out", str(fsc_true), *common])
        rec_summary = read_json(rec / "summary.json")
        truth_summary = read_json(fsc_true / "summary.json")
        truth, apix = read_map(true_map)
        recon, _ = read_map(rec / "map.mrc")
        plot_central_slices([("true map", truth), ("reconstruction", recon)], out / "maps.png")
        with open_stack(sim / "particles.mrcs") as stack:
            plot_image_row(stack[np.arange(min(8, len(stack)))], out / "particles.png", "simulated particles (CTF, shifts, noise)")
        summary = {
            "map": ATTRIBUTION,
            "n_particles": n,
            "snr": snr,
            "half_map_resolution_0143": rec_summary["resolution_0143"],
            "half_map_resolution_05": rec_summary["resolution_05"],
            "resolution_vs_truth_0143": truth_summary["resolution_0143"],
            "resolution_vs_truth_05": truth_summary["resolution_05"],
            "pcc_vs_truth": truth_summary["pcc"],
        }
        sections = [
            "# cryopose demo report",
            "",
            f"Map: {ATTRIBUTION}. {n} particles simulated at SNR {snr} with CTF (defocus 1.0-2.5 µm) and origins up to 15 Å.",
            "",
            "## Reconstruction",
            "",
            "![particles](particles.png)",
            "",
            f"- half-map FSC resolution: {rec_summary['resolution_0143']:.2f} Å (0.143), {rec_summary['resolution_05']:.2f} Å (0.5)",
            f"- against the true map: {truth_summary['resolution_0143']:.2f} Å (0.143), {truth_summary['resolution_05']:.2f} Å (0.5), "
            f"PCC {truth_summary['pcc']:.3f}",
            "",
            "![maps](maps.png)",
            "",
            "![half-map FSC](reconstruction/fsc.png) ![FSC against the truth](fsc_vs_truth/fsc.png)",
            "",
        ]
        options = {"learn_minutes": learn_minutes}
        for extra in DEMO_SECTIONS:
            lines, values = extra(out, true_map, device, seed, options)
            sections += lines
            summary.update(values)
        summary["seconds"] = time.perf_counter() - t0
        write_text_atomic(out / "report.md", "\n".join(sections) + "\n")
        write_json_atomic(out / "summary.json", summary)
        click.echo(f"\nDemo finished in {summary['seconds']:.0f} s. Report: {out / 'report.md'} (summary: {out / 'summary.json'})")


def validation_section(out: Path, true_map: Path, device: str, seed: int, options: dict) -> tuple[list[str], dict]:
    """Validate a mixed set, prune it, and compare reconstructions from all and pruned."""
    from cryopose.jobs.demo import make_mixed_set

    val = make_output_folder(out / "validation")
    n_sim = len(read_star(out / "simulated" / "particles.star"))
    n_bad = min(900, n_sim) // 6
    n_good = 4 * n_bad
    kinds = make_mixed_set(out / "simulated", val, n_good, n_bad, n_bad, seed)
    common = ["--device", device]
    run_command("validate", ["--map", str(true_map), "--particles", str(val / "mixed.star"), "--out", str(val), *common])
    curves, res = [], {}
    for name, star in (("all", val / "particles.star"), ("pruned", val / "pruned.star")):
        run_command("reconstruct", [str(star), "--out", str(val / f"reconstruct_{name}"), *common])
        run_command("fsc", [str(val / f"reconstruct_{name}" / "map.mrc"), str(true_map), "--out", str(val / f"fsc_{name}"), *common])
        summary = read_json(val / f"fsc_{name}" / "summary.json")
        curves.append((f"{name} particles vs true map", np.array(summary["frequency"]), np.array(summary["fsc"])))
        res[name] = summary
    plot_fsc_curves(curves, out / "validation_fsc.png", title="Reconstruction from all vs pruned particles")
    vsum = read_json(val / "summary.json")
    scored = read_star(val / "particles.star").table
    aligned = scored["cryoposeAligned"].to_numpy().astype(int) == 1
    kept = {k: float(aligned[kinds == k].mean()) for k in ("good", "noise", "wrong_pose")}
    lines = [
        "## Alignment quality (Vargas et al. 2017)",
        "",
        f"A mixed set: {n_good} good particles, {n_bad} pure-noise images, {n_bad} true particles with random poses "
        f"(true fraction of good: {n_good / len(kinds):.2f}). `cryopose validate` found Q = {vsum['Q']:.2f} "
        f"(precision passed by {vsum['precision_fraction']:.2f}, accuracy by {vsum['accuracy_fraction']:.2f}).",
        f"Kept after pruning: good {kept['good']:.0%}, noise {kept['noise']:.0%}, wrong poses {kept['wrong_pose']:.0%}.",
        "",
        "![soft validation](validation/soft_validation.png)",
        "",
        f"Reconstruction against the true map: all particles {res['all']['resolution_05']:.1f} Å (FSC 0.5), "
        f"pruned {res['pruned']['resolution_05']:.1f} Å; PCC {res['all']['pcc']:.3f} -> {res['pruned']['pcc']:.3f}.",
        "",
        "![all vs pruned](validation_fsc.png)",
        "",
    ]
    values = {"validation_Q": vsum["Q"], "validation_true_good_fraction": n_good / len(kinds),
              "validation_kept": kept,
              "validation_resolution_05_all": res["all"]["resolution_05"],
              "validation_resolution_05_pruned": res["pruned"]["resolution_05"]}
    return lines, values


def alignment_section(out: Path, true_map: Path, device: str, seed: int, options: dict) -> tuple[list[str], dict]:
    """Move the map (rotate, shift, flip the hand) and its particles, then align both back."""
    from cryopose.align.map_alignment import transform_angle_deg
    from cryopose.jobs.demo import make_moved_map

    ali = make_output_folder(out / "map_alignment")
    rot, m_true, t_true = make_moved_map(true_map, out / "simulated", ali, seed)
    run_command("align-maps", ["--ref", str(true_map), str(ali / "moved.mrc"), "--particles", str(ali / "moved_particles.star"),
                               "--out", str(ali), "--device", device])
    entry = read_json(ali / "transforms.json")[0]
    # the alignment undoes the move: moved(M y + t) = V(y) means M ~ m_true^-1
    m_found = np.array(entry["rotation"])
    residual = m_found @ m_true if entry["hand_flipped"] else None
    angle_error = transform_angle_deg(residual) if residual is not None else float("nan")
    run_command("reconstruct", [str(ali / "particles_moved.star"), "--out", str(ali / "reconstruction"), "--device", device])
    run_command("fsc", [str(ali / "reconstruction" / "map.mrc"), str(true_map), "--out", str(ali / "fsc_vs_truth"), "--device", device])
    fsc = read_json(ali / "fsc_vs_truth" / "summary.json")
    lines = [
        "## Map alignment and poses carried along",
        "",
        f"The map was rotated by {transform_angle_deg(rot):.1f}°, shifted by {np.linalg.norm(t_true):.1f} Å and hand-flipped; "
        f"its particles' poses were moved with it. `cryopose align-maps` found the hand "
        f"({'right' if entry['hand_flipped'] else 'WRONG'}), with a rotation error of {angle_error:.2f}° "
        f"(score {entry['score']:.3f}).",
        f"Reconstructing from the updated particles gives {fsc['resolution_05']:.1f} Å (FSC 0.5) against the original map "
        f"(PCC {fsc['pcc']:.3f}): the poses followed their map back.",
        "",
        "![difference](map_alignment/difference_moved.png)",
        "",
    ]
    return lines, {"alignment_hand_right": bool(entry["hand_flipped"]), "alignment_rotation_error_deg": angle_error,
                   "alignment_reconstruction_pcc_vs_truth": fsc["pcc"]}


def learning_section(out: Path, true_map: Path, device: str, seed: int, options: dict) -> tuple[list[str], dict]:
    """Train a grid estimator on 80% of the simulated particles for options["learn_minutes"]
    (0: skip), predict the other 20%, then refine the predicted poses against the true map."""
    from cryopose.jobs.demo import pose_error_summary, split_particles

    learn_minutes = float(options.get("learn_minutes", 3.0))
    if learn_minutes == 0:
        return [], {}
    learn = make_output_folder(out / "learning")
    n_sim = len(read_star(out / "simulated" / "particles.star"))
    train_star, test_star = split_particles(out / "simulated", learn, int(0.8 * n_sim))
    common = ["--device", device]
    run_command("train", ["--particles", str(train_star), "--out", str(learn / "model"), "--model", "grid", "--image-size", "32",
                          "--minutes", f"{learn_minutes:g}", "--seed", str(seed), *common])
    run_command("predict", ["--model", str(learn / "model" / "model.pt"), "--particles", str(test_star),
                            "--out", str(learn / "predicted"), "--keep-fraction", "0.75", *common])
    run_command("refine", ["--particles", str(learn / "predicted" / "particles.star"), "--map", str(true_map),
                           "--out", str(learn / "refined"), "--iterations", "3", *common])
    predicted = pose_error_summary(learn / "predicted" / "particles.star", test_star)
    kept = read_json(learn / "predicted" / "summary.json")["against_input_poses"]
    refined = pose_error_summary(learn / "refined" / "particles.star", test_star)
    chance = read_json(learn / "refined" / "summary.json")["chance_reasons"]
    n_test = n_sim - int(0.8 * n_sim)
    lines = [
        "## Learning poses, then refining them",
        "",
        f"`cryopose train` fitted an SO(3)-grid estimator to {int(0.8 * n_sim)} particles in {learn_minutes:g} min "
        f"(32 px); `cryopose predict` gave the other {n_test} poses from their images alone: median error "
        f"{predicted['median_deg']:.1f}°, mean {predicted['mean_deg']:.1f}° ({predicted['under_10_deg']:.0%} under 10°). "
        f"The most confident 75% (kept.star): median {kept['kept_median_deg']:.1f}°, mean {kept['kept_mean_deg']:.1f}°.",
        f"`cryopose refine` then searched near each predicted pose against the map: median {refined['median_deg']:.1f}°, "
        f"mean {refined['mean_deg']:.1f}°, origins {predicted['origin_median_angstrom']:.1f} -> "
        f"{refined['origin_median_angstrom']:.1f} Å. A few minutes of CPU training gives a start that local refinement "
        "finishes; longer training (see the README's benchmark) gives a better start."
        + (f" Here the refinement said its result looks like chance ({'; '.join(chance)}): the start was too far off."
           if chance else ""),
        "",
        "![training curve](learning/model/training.png)",
        "",
    ]
    values = {"learning_predicted": predicted, "learning_kept_median_deg": kept["kept_median_deg"],
              "learning_refined": refined, "learning_refined_at_chance": bool(chance)}
    return lines, values


# Each stage of the pipeline is a function (out, true_map, device, seed, options) -> (markdown lines, summary values).
DEMO_SECTIONS: list = [validation_section, alignment_section, learning_section]
