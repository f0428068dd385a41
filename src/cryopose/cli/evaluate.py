"""``cryopose evaluate``: benchmark predicted poses against a ground truth the CESPED way."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Number,
    cluster_options,
    device_option,
    force_option,
    progress_bar,
    resolve_device,
)

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("evaluate")
@click.option(
    "--truth",
    type=_FILE,
    help="STAR of the ground truth: poses, origins, CTF, half sets (rlnRandomSubset) "
    "[default: the predictions' cryoposeTrue* columns].",
)
@click.option(
    "--pred",
    "preds",
    multiple=True,
    type=_FILE,
    help="STAR of predicted poses (repeat for several, e.g. one per half; matched by rlnImageName).",
)
@click.option(
    "--train",
    "train",
    is_flag=True,
    help="The whole CESPED protocol instead of --pred: train an estimator on each half set of --truth, "
    "predict each half with the other half's model, evaluate.",
)
@click.option(
    "--model",
    "kind",
    type=click.Choice(["grid", "forum"]),
    default="grid",
    show_default=True,
    help="With --train: the estimator to train.",
)
@click.option(
    "--epochs",
    type=COUNT,
    default=None,
    help="With --train: epochs per half [default: grid 60, forum 100, without --minutes].",
)
@click.option(
    "--minutes",
    type=POSITIVE,
    default=None,
    help="With --train: time budget per half (its first epoch's duration sets the number of epochs).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8),
    default=32,
    show_default=True,
    help="With --train: side (px) the images are Fourier-cropped to.",
)
@click.option(
    "--map", "gt_map", type=_FILE, help="Ground-truth map to compare with [default: (GT0 + GT1)/2 from the truth]."
)
@click.option("--mask", type=_FILE, help="Mask for the masked metrics [default: automatic from the ground-truth map].")
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names: C4, D7, O, I1...).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--maps/--no-maps",
    "reconstruct",
    default=True,
    show_default=True,
    help="Reconstruct and compare maps (--no-maps: pose errors only).",
)
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="CTF-weight the reconstructions.")
@click.option("--apix", type=POSITIVE, help="Pixel size in Å when the stars have none.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the half split when no half sets are known."
)
@click.option("--chunk-size", type=COUNT, default=256, show_default=True, help="Particles read and inserted at a time.")
@click.option(
    "--mask-threshold",
    type=Number(),
    default=None,
    help="Threshold of the automatic mask [default: 0.2 of the low-passed map's maximum].",
)
@click.option(
    "--mask-lowpass", type=NON_NEGATIVE, default=15.0, show_default=True, help="Low-pass (Å) before thresholding."
)
@click.option(
    "--mask-extend", type=NON_NEGATIVE, default=6.0, show_default=True, help="Extend the thresholded mask by (Å)."
)
@click.option(
    "--mask-soft-edge", type=NON_NEGATIVE, default=8.0, show_default=True, help="Raised-cosine edge width (Å)."
)
@force_option
@device_option
@cluster_options
def command(
    truth,
    preds,
    train,
    kind,
    epochs,
    minutes,
    image_size,
    gt_map,
    mask,
    sym,
    out,
    reconstruct,
    ctf,
    apix,
    seed,
    chunk_size,
    mask_threshold,
    mask_lowpass,
    mask_extend,
    mask_soft_edge,
    force,
    device,
    executor=None,
) -> None:
    """Benchmark predicted poses against the ground truth (CESPED's metrics and protocol).

    Per particle: angular error (geodesic, minimised over the symmetry group), viewing
    direction, in-plane and shift errors; MAnE, wMAnE, median, fractions under 5/10/15/30
    deg, and with cryoposeConfidence its Spearman correlation with the error. Then the
    ground-truth half maps GT0/GT1 and the half maps V0/V1 from the predicted poses of each
    half, PCC and FSC resolution of (GT, V), (V0, V1), (GT0, GT1), dPCC and dFSCR, unmasked
    and masked. Writes DIR/metrics.json, per_particle.star, report.md, figures and maps.

    With --train (and no --pred) it runs the whole protocol: one estimator trained per
    half set of --truth (DIR/train), each half predicted by the other half's model
    (DIR/predict), then this evaluation.

    Example: cryopose evaluate --truth sim/particles.star --pred pred_half1.star --pred pred_half2.star --out eval

    Example: cryopose evaluate --truth sim/particles.star --train --model grid --epochs 30 --out eval
    """
    from cryopose.errors import UserError
    from cryopose.jobs.evaluate import EvaluateSettings, run_evaluate

    if train == bool(preds):
        raise UserError("give the predictions with --pred, or --train to train and predict them here (not both)")
    if train and truth is None:
        raise UserError("--train needs the ground truth with --truth (poses and rlnRandomSubset half sets)")
    if not train and (epochs is not None or minutes is not None):
        raise UserError("--epochs and --minutes set the training of --train; add --train or leave them out")
    dev = resolve_device(device)
    settings = EvaluateSettings(
        symmetry=sym,
        reconstruct=reconstruct,
        ctf=ctf,
        seed=seed,
        chunk_size=chunk_size,
        mask_threshold=mask_threshold,
        mask_lowpass=mask_lowpass,
        mask_extend=mask_extend,
        mask_soft_edge=mask_soft_edge,
    )
    if train:
        from cryopose.jobs.protocol import run_protocol
        from cryopose.jobs.train import TrainJobSettings
        from cryopose.learn.models import default_network
        from cryopose.learn.preprocess import ImageSettings
        from cryopose.learn.train import TrainSettings

        network = default_network(kind)
        training = TrainJobSettings(
            train=TrainSettings(network=network, epochs=epochs, minutes=minutes, seed=seed),
            image=ImageSettings(image_size=image_size, ctf_correction="phase_flip" if ctf else "none"),
            halves=True,
        )
        with progress_bar("evaluate --train", unit="step") as update:
            m = run_protocol(
                truth,
                out,
                training,
                settings,
                gt_map=gt_map,
                mask=mask,
                apix=apix,
                device=dev,
                progress=update,
                stage=lambda text: click.echo(text, err=True),
                force=force,
                executor=executor,
            )
    else:
        with progress_bar("evaluate") as update:
            m = run_evaluate(
                list(preds),
                out,
                truth=truth,
                gt_map=gt_map,
                mask=mask,
                settings=settings,
                apix=apix,
                device=dev,
                progress=update,
                force=force,
                executor=executor,
            )
    pose = m["pose"]
    click.echo(
        f"{m['n_particles']} particles: MAnE {pose['MAnE_deg']:.2f} deg, wMAnE {pose['wMAnE_deg']:.2f} deg, "
        f"median {pose['median_angular_error_deg']:.2f} deg"
    )
    if "maps" in m:
        c = m["maps"]["masked"]
        click.echo(
            f"masked: PCC(GT, V) {c['pcc_gt_v']:.4f}, dPCC {c['delta_pcc']:.4f}, "
            f"dFSCR 0.143 {c['delta_fscr_0143']:.2f} A, 0.5 {c['delta_fscr_05']:.2f} A"
        )
    click.echo(f"wrote {out}/report.md and {out}/metrics.json")
