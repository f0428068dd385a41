"""``cryopose align-maps``: align 3-D maps to a reference and carry particle poses along."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cryopose.cli.common import NON_NEGATIVE, POSITIVE, Number, device_option, force_option, resolve_device
from cryopose.errors import UserError


def _existing(paths, what: str) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"{what} {p} does not exist; check the path")


def result_lines(entries: list[dict], out: Path) -> list[str]:
    """The lines ``cryopose align-maps`` prints after its work (the demo prints them too)."""
    return [
        *(
            f"{e['map']}: angle {e['angle_deg']:.2f} deg, shift {sum(v * v for v in e['shift_A']) ** 0.5:.2f} A, "
            f"hand flipped {e['hand_flipped']}, FSC0.143 vs reference {e['fsc_resolution_0143']:.1f} A"
            for e in entries
        ),
        f"wrote {out}/transforms.json and the aligned maps",
    ]


@click.command("align-maps")
@click.argument(
    "maps",
    metavar="MAP [MAP ...]",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--ref",
    "reference",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Reference map (MRC).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--ref-mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Mask of the reference.",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Mask of the maps: once (for all maps) or once per MAP, in order.",
)
@click.option(
    "--apply-mask/--no-apply-mask",
    default=True,
    show_default=True,
    help="Mask reference and maps before aligning (off: the reference stays unmasked).",
)
@click.option(
    "--lowpass",
    type=POSITIVE,
    default=None,
    help="Low-pass (A) applied after masking, before alignment [default: max(8, 3 x pixel size)].",
)
@click.option(
    "--max-shift", type=NON_NEGATIVE, default=None, help="Largest shift searched (A) [default: a quarter of the box]."
)
@click.option(
    "--max-angle",
    type=Number(0, 180),
    default=180.0,
    show_default=True,
    help="Largest rotation searched (deg); 180 searches all rotations, 0 only translations.",
)
@click.option(
    "--check-hands/--no-check-hands",
    default=True,
    show_default=True,
    help="Also try the z-flipped map and keep the better hand.",
)
@click.option(
    "--particles",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="STAR file of the particles of a MAP, once per MAP in order; poses follow the map.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="'MAP MAP ...'",
    help="Maps sharing one transform, quoted and space- (or comma-) separated: the first is "
    "aligned, the others (sharpened, half maps) are moved with it. Repeatable.",
)
@click.option("--apix", type=POSITIVE, default=None, help="Pixel size (Å) of maps whose header has none.")
@force_option
@device_option
def command(
    maps,
    reference,
    out_dir,
    ref_mask,
    masks,
    apply_mask,
    lowpass,
    max_shift,
    max_angle,
    check_hands,
    particles,
    groups,
    apix,
    force,
    device,
) -> None:
    """Align each MAP to the reference (--ref) and write aligned maps, masks, particles,
    transforms.json, difference and FSC plots into --out.

    Example: cryopose align-maps --ref ref.mrc class2.mrc --particles class2.star --out aligned
    """
    from cryopose.align.map_alignment import MapAlignmentSettings
    from cryopose.jobs.align_maps import run_align_maps

    dev = resolve_device(device)
    group_lists = [[Path(p) for p in shlex.split(g.replace(",", " "))] for g in groups]
    _existing([p for g in group_lists for p in g], "group map")
    settings = MapAlignmentSettings(
        lowpass=lowpass, max_shift=max_shift, max_angle=max_angle, check_hands=check_hands, apply_mask=apply_mask
    )
    entries = run_align_maps(
        reference,
        list(maps),
        out_dir,
        settings,
        ref_mask=ref_mask,
        masks=list(masks),
        particles=list(particles),
        groups=group_lists,
        device=dev,
        apix=apix,
        force=force,
    )
    for line in result_lines(entries, out_dir):
        click.echo(line)
