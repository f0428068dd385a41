"""``cryopose train``: train a pose estimator on aligned particles."""

from __future__ import annotations

from pathlib import Path

import click

from cryopose.cli.common import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Number,
    device_option,
    force_option,
    progress_bar,
    resolve_device,
)

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def result_lines(s: dict, out: Path) -> list[str]:
    """The lines ``cryopose train`` prints after its work (the demo prints them too)."""
    lines = []
    for m in s["models"]:
        best = m["best"]
        where = f"{out}/{m['name']}" if s["halves"] else str(out)
        if "val_median_deg" in best:
            verdict = (
                f", AT CHANCE LEVEL (random poses: {m['chance_median_deg']:.1f} deg; do not use this model)"
                if m["at_chance"]
                else f" (random poses: {m['chance_median_deg']:.1f} deg)"
            )
            lines.append(
                f"{m['name']}: {m['epochs']} epochs in {m['training_seconds'] / 60:.1f} min; best epoch "
                f"{m['best_epoch']}: validation median {best['val_median_deg']:.1f} deg, mean "
                f"{best['val_mean_deg']:.1f} deg{verdict}, origin {best['val_origin_median_angstrom']:.1f} A "
                f"-> {where}/model.pt"
            )
        else:
            lines.append(
                f"{m['name']}: {m['epochs']} epochs in {m['training_seconds'] / 60:.1f} min -> {where}/model.pt"
            )
    return lines


@click.command("train")
@click.option("--particles", required=True, type=_FILE, help="RELION STAR of aligned particles (poses are the labels).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--model",
    "kind",
    type=click.Choice(["grid", "forum"]),
    default="grid",
    show_default=True,
    help="grid: distribution over an SO(3) grid; forum: cryo-forum's quaternion head with Bingham uncertainty.",
)
@click.option("--sym", default="C1", show_default=True, help="Point-group symmetry (RELION names).")
@click.option(
    "--image-size",
    default=32,
    type=click.IntRange(min=8),
    show_default=True,
    help="Side (px) the images are Fourier-cropped to (64 costs four times as much per epoch and needs more epochs).",
)
@click.option(
    "--crop-factor",
    default=1.0,
    type=Number(0, 1, low_open=True),
    show_default=True,
    help="Fraction of the box kept by a centre crop before resizing.",
)
@click.option(
    "--ctf-correction",
    type=click.Choice(["none", "phase_flip", "wiener"]),
    default="phase_flip",
    show_default=True,
    help="CTF correction of the images.",
)
@click.option(
    "--epochs",
    type=COUNT,
    default=None,
    help="Epochs of the learning-rate schedule [default: grid 60, forum 100, without --minutes].",
)
@click.option(
    "--minutes",
    type=POSITIVE,
    default=None,
    help="Time budget: the first epoch's duration sets the number of epochs (at most --epochs), fixed from then on.",
)
@click.option(
    "--val-fraction",
    default=0.1,
    type=Number(0, 1, high_open=True),
    show_default=True,
    help="Fraction of the particles held out for the validation curve and the choice of the best epoch.",
)
@click.option(
    "--halves",
    is_flag=True,
    help="Train one model per rlnRandomSubset half (half1/, half2/) for cross-half prediction.",
)
@click.option(
    "--batch-size",
    default=64,
    type=click.IntRange(min=2),
    show_default=True,
    help="Particles per step (all processes together).",
)
@click.option(
    "--learning-rate",
    default=2e-3,
    type=POSITIVE,
    show_default=True,
    help="Peak learning rate (AdamW, cosine schedule).",
)
@click.option(
    "--channels",
    default="16,32,64,128",
    show_default=True,
    help="Backbone widths, comma-separated (the paper's VGG-like net: 32,64,128,256,1024).",
)
@click.option(
    "--grid-order",
    default=2,
    type=click.IntRange(1, 3),
    show_default=True,
    help="HEALPix order of the SO(3) grid (2: 4,608 poses about 15 deg apart).",
)
@click.option(
    "--no-auxiliary-grid", is_flag=True, help="forum: train the quaternion head alone (no auxiliary grid loss)."
)
@click.option(
    "--paper-head",
    is_flag=True,
    help="forum: the paper's head (one linear layer, A = L L^T) instead of a hidden layer and a symmetric A.",
)
@click.option(
    "--pair-sampling",
    type=click.Choice(["random", "stratified"]),
    default="random",
    show_default=True,
    help="forum: pairs for the Siamese distance loss.",
)
@click.option(
    "--max-shift-augment",
    default=0.0,
    type=NON_NEGATIVE,
    show_default=True,
    help="Random shifts (Å) added to the training images (origins updated).",
)
@click.option("--apix", default=None, type=POSITIVE, help="Pixel size (Å) when the star has none.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split, the weights and the augmentation.")
@force_option
@device_option
def command(
    particles,
    out,
    kind,
    sym,
    image_size,
    crop_factor,
    ctf_correction,
    epochs,
    minutes,
    val_fraction,
    halves,
    batch_size,
    learning_rate,
    channels,
    grid_order,
    no_auxiliary_grid,
    paper_head,
    pair_sampling,
    max_shift_augment,
    apix,
    seed,
    force,
    device,
) -> None:
    """Train a pose estimator (poses and origins from images) on aligned PARTICLES.

    Writes DIR/model.pt (the best epoch by validation median error, with its settings),
    training.csv and training.png (loss and validation angular error per epoch) and
    summary.json; with --halves one model per half in DIR/half1 and DIR/half2. The
    learning-rate schedule counts epochs, so a busy machine gives the same model, later.
    A model whose validation error is not clearly better than random poses is flagged (a
    warning here, in summary.json and in the model, and again by predict). The state is
    saved every epoch and an interrupted run resumes. On several GPUs or machines start it
    with torchrun (one process per GPU).

    Example: cryopose train --particles run_data.star --out model --model forum --minutes 20
    """
    from cryopose.errors import UserError
    from cryopose.jobs.train import TrainJobSettings, run_train
    from cryopose.learn.augment import AugmentSettings
    from cryopose.learn.models import default_network
    from cryopose.learn.preprocess import ImageSettings
    from cryopose.learn.train import TrainSettings

    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise UserError(
            f"--channels {channels!r} is not a comma-separated list of whole numbers (e.g. 16,32,64,128)"
        ) from None
    if not widths or min(widths) < 1 or len(widths) > 6:
        raise UserError(f"--channels {channels!r}: give 1 to 6 positive widths (e.g. 16,32,64,128)")
    dev = resolve_device(device)
    network = {
        **default_network(kind),
        "channels": widths,
        "grid_order": grid_order,
        "auxiliary_grid": not no_auxiliary_grid,
    }
    if paper_head:
        network.update(head_hidden=0, qcqp="cholesky")
    settings = TrainJobSettings(
        train=TrainSettings(
            network=network,
            epochs=epochs,
            minutes=minutes,
            batch_size=batch_size,
            learning_rate=learning_rate,
            symmetry=sym,
            pair_sampling=pair_sampling,
            seed=seed,
        ),
        image=ImageSettings(image_size=image_size, crop_factor=crop_factor, ctf_correction=ctf_correction),
        augment=AugmentSettings(in_plane=True, max_shift_angstrom=max_shift_augment),
        val_fraction=val_fraction,
        halves=halves,
    )
    with progress_bar("train", unit="step") as update:
        summary = run_train(
            particles,
            out,
            settings,
            apix=apix,
            device=dev,
            progress=update,
            stage=lambda text: click.echo(text, err=True),
            force=force,
        )
    for line in result_lines(summary, out):
        click.echo(line)
