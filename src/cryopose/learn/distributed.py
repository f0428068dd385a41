"""Training across processes and GPUs with PyTorch DDP, started by ``torchrun``.

One training loop serves one process and many: :func:`distributed_context` reads
torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), joins the
process group with the backend that suits the device (NCCL on CUDA, gloo on CPU), and
gives a :class:`DistributedContext` that

- puts the model on this process's device and wraps it in DistributedDataParallel
  (gradients averaged over the processes in backward),
- splits a Dataset among the processes with a DistributedSampler (the same sampler, with
  one replica, when alone, so a run's batches depend only on the seed and the global batch
  size, not on the number of processes),
- averages metrics over the processes (``mean``),
- does rank-0-only work (checkpoints, progress, logs) with ``on_main``,
- and leaves the process group cleanly, also on an error.

Without torchrun (no WORLD_SIZE, or 1) it is a single process and nothing is initialised.

The training job (``cryopose train``) uses it like this::

    with distributed_context(device) as ctx:
        model = ctx.wrap(build_model())
        loader = ctx.loader(dataset, global_batch_size, shuffle=True, seed=seed)
        for epoch in range(epochs):
            ctx.set_epoch(loader, epoch)
            for batch in loader:
                loss = loss_fn(model(batch.to(ctx.device)))
                optimiser.zero_grad(); loss.backward(); optimiser.step()
                running = ctx.mean(loss.detach())          # same value on every rank
            ctx.on_main(save_checkpoint, ctx.unwrap(model).state_dict(), epoch)

and is started with ``torchrun --nproc-per-node 4 -m cryopose train ...`` (one process
per GPU, or several on CPU). Files are written by the callable given to ``on_main``
(the jobs layer's checkpoint writer), never here.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cryopose.errors import UserError

__all__ = ["DistributedContext", "distributed_context", "backend_for"]


def backend_for(device: torch.device) -> str:
    """The collective backend for a device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class DistributedContext:
    """This process's place in a (possibly one-process) training run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and shows progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ model
    def wrap(self, model: torch.nn.Module, sync_batchnorm: bool = False, **ddp_kwargs: Any) -> torch.nn.Module:
        """``model`` on this process's device; in a distributed run wrapped in
        DistributedDataParallel (which also makes every rank start from rank 0's weights).
        ``sync_batchnorm`` turns BatchNorm layers into SyncBatchNorm."""
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        if sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        """The plain module inside a DDP wrapper (for its state_dict)."""
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    # ------------------------------------------------------------------ data
    def per_rank_batch_size(self, global_batch_size: int) -> int:
        """This rank's share of a global batch (the global batch must divide evenly)."""
        if global_batch_size % self.world_size:
            raise UserError(
                f"a batch of {global_batch_size} cannot be shared evenly among {self.world_size} processes; "
                "use a batch size that is a multiple of the number of processes",
                option="batch-size",
            )
        return global_batch_size // self.world_size

    def sampler(
        self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> DistributedSampler:
        """This rank's share of ``dataset``: the same seeded permutation on every rank,
        dealt out in turn (rank r gets items r, r + W, ...)."""
        return DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def loader(
        self,
        dataset: Dataset,
        global_batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        **loader_kwargs: Any,
    ) -> DataLoader:
        """A DataLoader over this rank's share, ``global_batch_size / world_size`` items a
        batch. Step k of every rank together covers the items of step k of a one-process
        run with the same global batch and seed, so the gradients (DDP averages them) and
        the loss curve are the same up to rounding."""
        sampler = self.sampler(dataset, shuffle, seed, drop_last)
        return DataLoader(
            dataset,
            batch_size=self.per_rank_batch_size(global_batch_size),
            sampler=sampler,
            drop_last=drop_last,
            **loader_kwargs,
        )

    @staticmethod
    def set_epoch(loader: DataLoader, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating a loader from :meth:`loader`)."""
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ collectives
    def mean(self, value: torch.Tensor | float) -> torch.Tensor:
        """The mean of ``value`` over the ranks (itself when alone), on every rank."""
        t = torch.as_tensor(value, dtype=torch.float64 if not torch.is_tensor(value) else None).detach().clone()
        if not self.is_distributed:
            return t
        t = t.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def on_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` on rank 0 only (a checkpoint, a log line, a progress update), then
        wait for every rank, so that no rank reads a checkpoint before it exists. Returns
        ``fn``'s result on rank 0 and None elsewhere."""
        result = fn(*args, **kwargs) if self.is_main else None
        self.barrier()
        return result


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r} is not an integer; start the run with torchrun"
        ) from None


@contextmanager
def distributed_context(
    device: torch.device | str | None = None, timeout_seconds: float = 1800.0
) -> Iterator[DistributedContext]:
    """Join the run torchrun started (or run alone) and leave it cleanly on exit.

    ``device``: "cpu", "cuda" (each rank takes GPU LOCAL_RANK) or None (CUDA when present).
    The backend is NCCL for CUDA and gloo for CPU. The process group is destroyed when the
    block ends, also after an error, so that no rank is left waiting for a barrier.
    """
    world = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    local_rank = _environment_int("LOCAL_RANK", 0)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("CUDA was asked for but no CUDA GPU is available; train on the CPU", option="device")
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise UserError(
                    f"process {local_rank} on this node has no GPU of its own ({torch.cuda.device_count()} "
                    "GPUs); start at most one process per GPU"
                )
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world <= 1:
        yield DistributedContext(0, 0, 1, device, None)
        return
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(f"WORLD_SIZE is set but {name} is not; start the run with torchrun")
    backend = backend_for(device)
    init: dict[str, Any] = dict(
        backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_seconds)
    )
    if backend == "nccl":
        init["device_id"] = device
    dist.init_process_group(**init)
    try:
        yield DistributedContext(rank, local_rank, world, device, backend)
    finally:
        dist.destroy_process_group()
