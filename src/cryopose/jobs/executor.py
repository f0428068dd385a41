"""Scale-out: the chunks of a per-particle job as Dask tasks, on this machine or a cluster.

One mechanism for every command. A job describes its per-chunk work as a
:class:`~cryopose.jobs.chunks.ChunkWork` (a top-level ``run(shared, part)``, the ``shared``
state every chunk needs, and ``part(indices)``, the chunk's own small inputs made on the
driver, e.g. ``images.take(indices)`` and its rows of poses) and hands an executor to
:func:`~cryopose.jobs.chunks.run_chunks` (or, for sums such as reconstruction, uses
:meth:`DaskExecutor.map_reduce`). Without an executor (``None``) everything runs in this
process exactly as before.

- ``shared`` is sent to the cluster once per run (one task whose result every chunk task
  uses), not once per chunk; it is part of the task graph, so Dask can recompute it if
  every worker holding it dies.
- Chunk tasks are submitted a window at a time and their results come back as they
  finish; the driver stores each one at once (so a restart skips it), reports progress and
  assembles the final arrays. A worker killed mid-run is replaced by its nanny and its
  tasks are recomputed; results are keyed by particle range, so nothing is lost or doubled.
- :func:`open_executor` starts a ``LocalCluster`` (``workers``) or connects to a running
  scheduler (``scheduler``, e.g. one started by dask-jobqueue on SLURM); a worker plugin
  sets each worker's torch threads so that the machine is not oversubscribed, and its
  malloc settings (:mod:`cryopose.jobs.allocator`).

This module imports ``distributed``; the jobs import it only when a cluster is used.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from cryopose.errors import UserError
from cryopose.jobs.allocator import allocator_environment, tune_allocator

if TYPE_CHECKING:  # pragma: no cover
    from cryopose.jobs.chunks import ChunkWork

__all__ = ["DaskExecutor", "open_executor", "local_cluster_shape", "usable_cpus", "TorchThreads"]

log = logging.getLogger("cryopose")

Range = tuple[int, int]
THREADS_VARIABLE = "CRYOPOSE_TORCH_THREADS"


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def local_cluster_shape(workers: int, cpus: int | None = None) -> tuple[int, int]:
    """(Dask threads per worker, torch threads per worker) for ``workers`` processes on
    ``cpus`` cores: one task at a time per process, and the cores shared out among the
    processes' torch thread pools (at least one each)."""
    cpus = usable_cpus() if cpus is None else cpus
    return 1, max(1, cpus // max(1, workers))


class TorchThreads(WorkerPlugin):
    """Dask worker plugin: set torch's intra-op threads when a worker starts (also on
    workers that replace dead ones), and cryopose's malloc settings (see
    :mod:`cryopose.jobs.allocator`; in place of the ``MALLOC_TRIM_THRESHOLD_`` that Dask's
    nanny sets, which made reconstruction 1.7-2.7x slower). ``threads`` None: the worker's
    environment variable CRYOPOSE_TORCH_THREADS if set (e.g. by a batch script that runs
    several worker processes per node), else the worker's cores divided by its Dask threads."""

    name = "cryopose-torch-threads"

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads

    def setup(self, worker: Any) -> None:
        import dask
        import torch

        tasks_at_once = max(1, int(getattr(worker.state, "nthreads", 1)))
        # the value Dask's nanny gave this worker (its configuration), not one the user exported
        nanny = dask.config.get("distributed.nanny.pre-spawn-environ", {}).get("MALLOC_TRIM_THRESHOLD_")
        nanny_trim = nanny is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(nanny)
        tune_allocator(override=("MALLOC_TRIM_THRESHOLD_",) if nanny_trim else (), one_arena=tasks_at_once == 1)
        n = self.threads or int(os.environ.get(THREADS_VARIABLE, "0") or 0)
        n = n or max(1, usable_cpus() // tasks_at_once)
        torch.set_num_threads(n)

    def teardown(self, worker: Any) -> None:  # pragma: no cover - nothing to undo
        pass


def _shared(value: Any) -> Any:
    """A task that just holds the run's shared state on the workers."""
    return value


def _combine(combine: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    return combine(a, b)


class DaskExecutor:
    """Runs chunk tasks on the Dask cluster of ``client``; closes ``cluster`` (a
    LocalCluster it started) with itself."""

    def __init__(self, client: Any, cluster: Any = None, window: int | None = None) -> None:
        self.client = client
        self.cluster = cluster
        self._window = window

    # ------------------------------------------------------------------ facts
    @property
    def n_workers(self) -> int:
        """Workers connected now (at least 1)."""
        return max(1, len(self.client.nthreads()))

    @property
    def n_threads(self) -> int:
        """Dask threads (tasks that run at once) over all workers now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def window(self) -> int:
        """Chunk tasks in flight at once: enough to keep every thread busy and let work
        stealing balance, few enough that the driver's graph stays small."""
        return self._window or max(16, 4 * self.n_threads)

    def _key(self, prefix: str) -> str:
        return f"cryopose-{prefix}-{uuid.uuid4().hex[:12]}"

    def _scatter_shared(self, shared: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "large object in task graph": sent once, on purpose
            return self.client.submit(_shared, shared, key=self._key("shared"), pure=False)

    # ------------------------------------------------------------------ map
    def _submit_chunk(self, work: "ChunkWork", shared: Any, rng: Range) -> Any:
        a, b = rng
        return self.client.submit(
            work.run, shared, work.part(np.arange(a, b)), key=self._key(f"chunk-{a}-{b}"), pure=False
        )

    def map(self, work: "ChunkWork", ranges: list[Range]) -> Generator[tuple[Range, Any], None, None]:
        """Run ``work`` on each [start, stop) of ``ranges``; yield (range, result) as tasks
        finish (any order). A task's exception is raised here; leaving the loop early
        (an error, an interrupt) cancels what is still queued."""
        if not ranges:
            return
        shared = self._scatter_shared(work.shared)
        todo = list(ranges)[::-1]
        live: dict[str, tuple[Any, Range]] = {}
        done = as_completed()

        def submit_one() -> None:
            rng = todo.pop()
            fut = self._submit_chunk(work, shared, rng)
            live[fut.key] = (fut, rng)
            done.add(fut)

        try:
            for _ in range(min(self.window(), len(todo))):
                submit_one()
            for fut in done:
                _, rng = live.pop(fut.key)
                result = fut.result()
                fut.release()
                if todo:
                    submit_one()
                yield rng, result
        finally:
            if live:
                self.client.cancel([f for f, _ in live.values()])
            shared.release()

    def map_reduce(
        self,
        work: "ChunkWork",
        ranges: list[Range],
        combine: Callable[[Any, Any], Any],
        flush_seconds: float | None = 30.0,
        on_chunk: Callable[[Range], None] | None = None,
    ) -> Generator[tuple[list[Range], Any], None, None]:
        """Run ``work`` on each range and sum the results with ``combine(a, b)`` (a top-level
        function returning a new value; associative and commutative) in a tree on the
        workers, pairing results as they finish. Every ``flush_seconds`` (None: never) a
        finished partial sum is brought back and yielded as (the ranges it covers, value),
        so that the caller can checkpoint it; the rest is yielded at the end. Together the
        yielded values cover every range exactly once. ``on_chunk(range)`` is called as each
        chunk task finishes."""
        if not ranges:
            return
        shared = self._scatter_shared(work.shared)
        todo = list(ranges)[::-1]
        live: dict[str, tuple[Any, list[Range], bool]] = {}  # key -> (future, ranges covered, is a chunk)
        done = as_completed()
        waiting = None  # a finished partial sum with nothing yet to pair with
        last_flush = time.monotonic()

        def submit_one() -> None:
            rng = todo.pop()
            fut = self._submit_chunk(work, shared, rng)
            live[fut.key] = (fut, [rng], True)
            done.add(fut)

        try:
            for _ in range(min(self.window(), len(todo))):
                submit_one()
            for fut in done:
                if fut.status == "error":
                    fut.result()  # raises the task's exception
                _, covered, is_chunk = live[fut.key]
                if is_chunk:
                    if on_chunk is not None:
                        on_chunk(covered[0])
                    if todo:
                        submit_one()
                if flush_seconds is not None and time.monotonic() - last_flush > flush_seconds:
                    value = fut.result()
                    del live[fut.key]
                    fut.release()
                    last_flush = time.monotonic()
                    yield covered, value
                elif waiting is None:
                    waiting = fut
                else:
                    pair = self.client.submit(_combine, combine, waiting, fut, key=self._key("sum"), pure=False)
                    live[pair.key] = (pair, live.pop(waiting.key)[1] + live.pop(fut.key)[1], False)
                    done.add(pair)
                    waiting.release()
                    fut.release()
                    waiting = None
            if waiting is not None:
                value = waiting.result()
                _, covered, _ = live.pop(waiting.key)
                waiting.release()
                waiting = None
                yield covered, value
        finally:
            if live:
                self.client.cancel([f for f, _, _ in live.values()])
            shared.release()

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect; stop the LocalCluster if this executor started it."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quiet_distributed() -> None:
    for name in (
        "distributed",
        "distributed.worker",
        "distributed.nanny",
        "distributed.scheduler",
        "distributed.core",
        "distributed.comm",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def open_executor(
    workers: int | None = None,
    scheduler: str | None = None,
    torch_threads: int | None = None,
) -> Iterator[DaskExecutor | None]:
    """The executor for a run: None (this process, as without Dask) when neither is given;
    a ``LocalCluster`` of ``workers`` processes (one task at a time each, the cores shared
    out as torch threads); or the running cluster at ``scheduler`` (its workers' torch
    threads: ``torch_threads``, or their cores over their Dask threads). Closed on exit."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise UserError(
            "give either a number of workers (a local cluster) or a scheduler address, not both", option="scheduler"
        )
    _quiet_distributed()
    if workers is not None:
        if workers < 1:
            raise UserError(f"the number of workers must be at least 1, got {workers}", option="workers")
        threads, cores_per_worker = local_cluster_shape(workers)
        torch_n: int | None = torch_threads or cores_per_worker
        import dask

        # Workers start with cryopose's malloc settings (cryopose.jobs.allocator) instead
        # of the MALLOC_TRIM_THRESHOLD_ that Dask's nanny would give them.
        environ = {"MALLOC_TRIM_THRESHOLD_": None, **allocator_environment()}
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.CRITICAL,
            )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
    else:
        cluster = None
        import dask

        try:
            client = Client(scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect", "30s"))
        except OSError as exc:
            raise UserError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); check the address and that "
                "the scheduler is running",
                option="scheduler",
            ) from None
        torch_n = torch_threads
    executor = DaskExecutor(client, cluster)
    try:
        client.register_plugin(TorchThreads(torch_n), name=TorchThreads.name)
        yield executor
    finally:
        executor.close()
