"""A small, realistic training loop fed by daskcubes batches; prints cubes/s read.

    python workflows/train_loop.py CUBE_STORE [--epochs 2] [--batch-size 16]

With PyTorch installed it trains a tiny 3-D convolutional autoencoder on the cubes;
without, a plain numpy linear model stands in, so the reading side can be measured
anywhere. Batches are shuffled per epoch and read in a background thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from daskcubes import open_cubes
from daskcubes.batches import Batches

TrainStep = Callable[[np.ndarray], float]


def torch_step() -> TrainStep | None:
    """One optimiser step of a tiny 3-D conv model, or None without PyTorch.

    The cube is average-pooled 4x first so the example stays quick on a CPU; the model
    learns to reproduce the pooled cube.
    """
    try:
        import torch
    except ImportError:
        return None
    pool = torch.nn.AvgPool3d(4, ceil_mode=True)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, kernel_size=3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 1, kernel_size=3, padding=1),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(cubes: np.ndarray) -> float:
        with torch.no_grad():
            batch = pool(torch.from_numpy(cubes).float().unsqueeze(1))  # (n, 1, d/4, ...)
        loss = torch.nn.functional.mse_loss(model(batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def numpy_step(n_features: int) -> TrainStep:
    """One gradient step of a linear model predicting each cube's mean from its first layer."""
    weights = np.zeros(n_features)

    def step(cubes: np.ndarray) -> float:
        x = cubes[:, 0].reshape(len(cubes), -1)
        error = x @ weights - cubes.mean(axis=(1, 2, 3))
        weights[:] -= 1e-3 * x.T @ error / len(cubes)
        return float(np.mean(error**2))

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="cube store written by python -m daskcubes.workflow")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=2, help="batches read ahead")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed")
    args = parser.parse_args()

    store = open_cubes(args.store)
    dim = store.cube_shape[1]
    step = torch_step() or numpy_step(dim * dim)
    batches = Batches(store, args.batch_size, shuffle=True, seed=args.seed, prefetch=args.prefetch)
    print(f"{store!r}; {len(batches)} batches of {args.batch_size} per epoch")
    for epoch in range(args.epochs):
        started, waited, cubes, loss = time.perf_counter(), 0.0, 0, float("nan")
        asked = time.perf_counter()
        for batch in batches.epoch(epoch):
            waited += time.perf_counter() - asked  # time the loop spent waiting for data
            loss = step(batch.cubes)
            cubes += len(batch.indices)
            asked = time.perf_counter()
        seconds = time.perf_counter() - started
        print(
            f"epoch {epoch}: {cubes} cubes in {seconds:.1f} s, {cubes / seconds:.1f} cubes/s "
            f"read and trained, waited {waited:.1f} s for data, loss {loss:.4g}"
        )


if __name__ == "__main__":
    main()
