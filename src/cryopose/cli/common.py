"""Options and helpers shared by the command modules (parsing and reporting only)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from cryopose.errors import UserError

__all__ = ["resolve_device", "device_option", "cluster_options", "progress_bar"]


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


def cluster_options(command: Callable) -> Callable:
    """Add ``--workers N`` and ``--scheduler ADDRESS`` to a command and pass it
    ``executor``: None (this process) without them, else a Dask executor on a local
    cluster of N processes or on the running cluster at ADDRESS, closed when the command
    returns. Use it under ``@click.command`` on every per-particle command, and hand
    ``executor`` to the job."""

    @click.option("--workers", type=click.IntRange(min=1), default=None,
                  help="Run the chunks on a local Dask cluster of this many processes (cores shared among them).")
    @click.option("--scheduler", metavar="ADDRESS", default=None,
                  help="Run the chunks on a running Dask cluster (e.g. tcp://node:8786, from dask-jobqueue on SLURM).")
    @functools.wraps(command)
    def wrapper(*args, workers: int | None, scheduler: str | None, **kwargs):
        if workers is not None and scheduler is not None:
            raise UserError("--workers starts a local cluster and --scheduler uses a running one; give one of them")
        if workers is None and scheduler is None:
            return command(*args, executor=None, **kwargs)
        from cryopose.jobs.executor import open_executor

        with open_executor(workers=workers, scheduler=scheduler) as executor:
            return command(*args, executor=executor, **kwargs)

    return wrapper


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
