"""Options and helpers shared by the command modules (parsing and reporting only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from cryopose.errors import UserError

__all__ = ["resolve_device", "device_option", "progress_bar"]


def resolve_device(name: str):
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, with a clear error when CUDA is absent."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown --device {name!r}; use cpu or cuda") from exc


device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where to compute: cpu, cuda or cuda:N.",
)


@contextmanager
def progress_bar(desc: str, unit: str = "particle") -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (shown on a terminal only); yields the jobs' progress
    callback ``update(advance, total)``."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, leave=False, disable=None) as bar:

        def update(advance: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(advance)

        yield update
