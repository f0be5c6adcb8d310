"""Train a small 3-D convolutional autoencoder on cubes, resumably; logs loss, speed, waits.

    python workflows/train.py --store CUBE_STORE [--epochs 2] [--batch-size 16]
    python workflows/train.py --stream CONFIG [--cubes N] ...     # cubes cut on demand
    python workflows/train.py ... --checkpoint DIR [--every 50] [--resume]

PyTorch on the CPU (``pip install 'daskcubes[torch]'``). Batches come from
:class:`~daskcubes.train.batches.Batches`: shuffled per epoch, cut or read on every core ahead
of the step. Each logged step gives its loss, the cubes per second of the run so far,
and the share of the step spent waiting for data. With ``--checkpoint DIR`` the model,
the optimizer and the loader's place in the epoch are saved every ``--every`` steps
(written to a temporary file, then renamed); a run killed at any moment and started
again with ``--resume`` continues from the last checkpoint and computes, step for step,
the losses an uninterrupted run computes: seeds are fixed, torch runs deterministic
algorithms on ``--torch-threads`` threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from daskcubes import (
    Batches,
    CubeStore,
    CubeStream,
    UserError,
    load_config,
    open_cubes,
    open_stream,
)

CHECKPOINT = "checkpoint.pt"


class Autoencoder(nn.Module):
    """Average-pools a cube ``pool`` times, encodes it in two strided 3-D convolutions and
    decodes it back; the loss is how well the pooled cube is reproduced."""

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool3d(pool, ceil_mode=True) if pool > 1 else nn.Identity()
        self.encode = nn.Sequential(
            nn.Conv3d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose3d(16, 8, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose3d(8, 1, 4, stride=2, padding=1),
        )

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """The loss of a ``(n, depth, dim, dim)`` batch."""
        with torch.no_grad():
            target = self.pool(cubes.float().unsqueeze(1))
        depth, rows, cols = target.shape[2:]
        # Two stride-2 layers round sizes up; the decoder's output is cut back to the input.
        decoded = self.decode(self.encode(target))[:, :, :depth, :rows, :cols]
        return nn.functional.mse_loss(decoded, target)


def source_of(args: argparse.Namespace) -> CubeStore | CubeStream:
    if args.store:
        return open_cubes(args.store)
    return open_stream(load_config(args.stream, cubes=args.cubes, seed=args.cube_seed))


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a kill at any moment leaves the old or the new
    file whole: a temporary file, flushed to disk, then renamed over the old one."""
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="cube store written by python -m daskcubes.workflow")
    source.add_argument("--stream", metavar="CONFIG", help="config whose cubes are streamed")
    parser.add_argument("--cubes", type=int, help="stream: cube count (default: the config's)")
    parser.add_argument("--cube-seed", type=int, help="stream: cube seed (default: the config's)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=2, help="batches read ahead")
    parser.add_argument("--seed", type=int, default=0, help="shuffling and model seed")
    parser.add_argument("--pool", type=int, default=4, help="average-pool cubes this many times")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--torch-threads", type=int, default=1, help="threads of torch's ops")
    parser.add_argument("--log-every", type=int, default=1, help="log every N steps")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="save state here")
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except UserError as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2
    return 0


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.torch_threads)
    source = source_of(args)
    batches = Batches(source, args.batch_size, shuffle=True, seed=args.seed, prefetch=args.prefetch)
    model = Autoencoder(args.pool)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    saved = args.checkpoint / CHECKPOINT if args.checkpoint else None
    if saved and saved.exists():
        if not args.resume:
            raise UserError(f"--checkpoint '{saved}' exists; pass --resume to continue it")
        state = torch.load(saved, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        print(f"resumed at step {step}, epoch {batches.position.epoch}")
    elif args.resume and not saved:
        raise UserError("--resume needs --checkpoint DIR")
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
    print(f"{source!r}; {len(batches)} batches of {args.batch_size} per epoch")

    started, cubes = time.perf_counter(), 0
    while (epoch := batches.position.epoch) < args.epochs:
        asked = time.perf_counter()
        for batch in batches.epoch(epoch):
            got = time.perf_counter()
            loss = model(torch.from_numpy(batch.cubes))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            cubes += len(batch.indices)
            del batch  # its buffer goes back to the loader's ring
            done = time.perf_counter()
            if saved and step % args.every == 0:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "loader": batches.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step,
                }
                save_atomically(state, saved)
            if step % args.log_every == 0:
                print(
                    f"step {step} epoch {epoch} loss {loss.item():.9g} "
                    f"{cubes / (done - started):.1f} cubes/s "
                    f"waited {(got - asked) / (done - asked):.0%} for data",
                    flush=True,
                )
            asked = time.perf_counter()


if __name__ == "__main__":
    sys.exit(main())
