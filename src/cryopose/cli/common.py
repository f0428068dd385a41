"""Options and helpers shared by the command modules (parsing and reporting only).

Option values are checked by their click types before any work (and before torch is
imported), so a bad value gets one line at once.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from cryopose.errors import UserError

__all__ = [
    "resolve_device",
    "device_option",
    "force_option",
    "cluster_options",
    "progress_bar",
    "Number",
    "POSITIVE",
    "NON_NEGATIVE",
    "COUNT",
]


class Number(click.ParamType):
    """A float within bounds; NaN is always refused and infinity unless ``allow_inf``."""

    name = "number"

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        allow_inf: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.high_open, self.allow_inf = low, high, low_open, high_open, allow_inf

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "a number"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            v = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if math.isnan(v) or (math.isinf(v) and not self.allow_inf):
            self.fail(f"{value} is not allowed; give a finite number {self._range()}", param, ctx)
        too_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        too_high = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if too_low or too_high:
            self.fail(f"{value} is out of range; give a number {self._range()}", param, ctx)
        return v


POSITIVE = Number(0.0, low_open=True)
NON_NEGATIVE = Number(0.0)
COUNT = click.IntRange(min=1)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(name: str):
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, with a clear error when CUDA is absent."""
    if not _DEVICE.match(name):
        raise UserError(f"unknown --device {name!r}; use cpu, cuda or cuda:N")
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    return torch.device(name)


def _check_device(ctx, param, value: str) -> str:
    if not _DEVICE.match(value):
        raise click.BadParameter(f"{value!r} is not a device; use cpu, cuda or cuda:N", ctx, param)
    return value


device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    callback=_check_device,
    help="Where to compute: cpu, cuda or cuda:N.",
)

force_option = click.option(
    "--force",
    is_flag=True,
    help="Replace existing files in the output that cryopose did not write (inputs are never replaced).",
)


def cluster_options(command: Callable) -> Callable:
    """Add ``--workers N`` and ``--scheduler ADDRESS`` to a command and pass it
    ``executor``: None (this process) without them, else a Dask executor on a local
    cluster of N processes or on the running cluster at ADDRESS, closed when the command
    returns. Use it under ``@click.command`` on every per-particle command, and hand
    ``executor`` to the job."""

    @click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Run the chunks on a local Dask cluster of this many processes (cores shared among them).",
    )
    @click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Run the chunks on a running Dask cluster (e.g. tcp://node:8786, from dask-jobqueue on SLURM).",
    )
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
