"""Several GPUs: one process per GPU, each cutting its own share of every epoch on its
own device, the ranks together seeing every cube once per epoch.

    torchrun --standalone --nproc-per-node 8 workflows/multi_gpu.py --config default
    torchrun --standalone --nproc-per-node 2 workflows/multi_gpu.py --device cpu \
        --config small --make-frames   # anywhere: two ranks on the CPU, over gloo

Each rank opens the stream on its device (``cuda:LOCAL_RANK``, or the CPU), so that it
holds the slab there, and reads ``Batches(..., rank=RANK, world_size=WORLD_SIZE)``: the
same shuffled order on every rank (same seed), every ``world_size``-th cube of it for
this rank. A small 3-D convolution trains under ``DistributedDataParallel``; at the end
the ranks gather which cubes they saw, and rank 0 says whether the epoch's cubes were
each seen exactly once. The frames store must exist (rank 0 makes it first with
``--make-frames``, the others wait).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from bench.data import make_frames_store, random_frames
from torch import nn

from daskcubes import Batches, load_config, open_stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name or YAML file")
    parser.add_argument("--cubes", type=int, help="cubes per epoch (default: the config's)")
    parser.add_argument("--frames-store", help="frames store (default: the config's)")
    parser.add_argument("--device", default="cuda", help="cuda (one GPU per rank) or cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--make-frames", action="store_true", help="rank 0 makes the store")
    args = parser.parse_args(argv)

    on_gpu = args.device == "cuda"
    dist.init_process_group("nccl" if on_gpu else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    config = load_config(args.config, cubes=args.cubes, frames_store=args.frames_store)
    if args.make_frames and rank == 0:
        frames = random_frames(config.n_frames, config.n_rows, config.n_cols)
        make_frames_store(config.frames_store, frames)
    dist.barrier()

    stream = open_stream(config, device)  # this rank's slab, on this rank's device
    batches = Batches(
        stream, args.batch_size, shuffle=True, seed=config.seed, rank=rank, world_size=world_size
    )
    model = nn.parallel.DistributedDataParallel(
        nn.Conv3d(1, 1, 3, padding=1, dtype=getattr(torch, config.dtype)).to(device)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen: list[np.ndarray] = []
    started = time.perf_counter()
    for epoch in range(args.epochs):
        # Equal step counts on every rank, as DDP needs: the ranks' shares differ by one
        # cube at most, so a rank with one batch fewer would leave the others waiting.
        steps = min_over_ranks(len(batches), device)
        for _, (ids, cubes) in zip(range(steps), batches.epoch(epoch), strict=False):
            loss = (model(cubes[:, None]) - cubes[:, None]).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch == 0:
                seen.append(ids)
    seconds = time.perf_counter() - started
    mine = np.concatenate(seen) if seen else np.empty(0, dtype=np.int64)
    everyone: list[np.ndarray | None] = [None] * world_size
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        together = np.concatenate([ids for ids in everyone if ids is not None])
        every_cube_once = np.array_equal(np.sort(together), np.arange(len(stream)))
        print(
            f"{world_size} ranks on {device.type}: {len(together)} cubes in epoch 0 of "
            f"{len(stream)}, every cube once: {every_cube_once}; "
            f"{args.epochs * len(together) / seconds:,.0f} cubes/s together"
        )
    dist.barrier()  # every rank done before any tears the group down
    dist.destroy_process_group()
    return 0


def min_over_ranks(count: int, device: torch.device) -> int:
    """The smallest ``count`` of all ranks."""
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


if __name__ == "__main__":
    sys.exit(main())
