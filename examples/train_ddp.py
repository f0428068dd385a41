"""A training loop on cryopose.learn.distributed: one process, or several under torchrun.

    python3 examples/train_ddp.py --out losses.json                      # one process
    torchrun --standalone --nproc-per-node 2 examples/train_ddp.py --out losses.json
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \
        --rdzv-endpoint $MASTER_NODE:29500 examples/train_ddp.py --device cuda --out losses.json

A small network learns to map noisy 2-D images of a Gaussian blob to its position. With
the same global batch and seed, the loss curve is the same (up to rounding) for any number
of processes: the test suite checks this for 1 and 2 CPU processes. Rank 0 alone writes
the loss curve and the final weights; every rank leaves the process group on exit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cryopose.learn.distributed import distributed_context


class Blobs(Dataset):
    """n images (size x size) of a Gaussian blob at a random position, plus noise; the
    target is the position. Made from a fixed seed, the same on every rank."""

    def __init__(self, n: int = 256, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.rand(n, 2, generator=g) * 2 - 1
        ax = torch.linspace(-1, 1, size)
        yy, xx = torch.meshgrid(ax, ax, indexing="ij")
        d2 = (xx[None] - self.targets[:, 0, None, None]) ** 2 + (yy[None] - self.targets[:, 1, None, None]) ** 2
        self.images = torch.exp(-d2 / 0.1)[:, None] + 0.1 * torch.randn(n, 1, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP would copy rank 0's anyway)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the loss curve (rank 0 writes it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch, shared among the processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed_context(args.device) as ctx:
        net = ctx.wrap(model())
        optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        loader = ctx.loader(Blobs(seed=args.seed), args.batch_size, shuffle=True, seed=args.seed)
        losses = []
        for epoch in range(args.epochs):
            ctx.set_epoch(loader, epoch)
            for images, targets in loader:
                loss = torch.nn.functional.mse_loss(net(images.to(ctx.device)), targets.to(ctx.device))
                optimiser.zero_grad()
                loss.backward()  # DDP averages the gradients over the ranks here
                optimiser.step()
                losses.append(float(ctx.mean(loss.detach())))
        state = {k: v.cpu().tolist() for k, v in ctx.unwrap(net).state_dict().items()}
        ctx.on_main(
            lambda: args.out.write_text(
                json.dumps({"world_size": ctx.world_size, "losses": losses, "final_bias": state["6.bias"]})
            )
        )


if __name__ == "__main__":
    main()
