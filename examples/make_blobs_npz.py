"""Write a small classification data set as nnfleet reads it: ``blobs_train.npz`` and
``blobs_test.npz``, each with ``x`` float32 ``(N, features)`` and ``y`` int64 ``(N,)``.

Gaussian blobs, one per class, drawn from a fixed seed (the same files every run)::

    python examples/make_blobs_npz.py --out data
    nnfleet train examples/mlp.ini --data data/blobs_train.npz --valid-split 0.1 --save w.npz
    nnfleet eval examples/mlp.ini --weights w.npz --data data/blobs_test.npz

Copy it and replace ``make`` with your own loading code: any ``x`` whose per-sample element
count matches the model's input shape works (``(N, 20)``, ``(N, 1, 1, 20)``, ...).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def make(n: int, features: int, classes: int, spread: float,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples around ``classes`` centres in ``features`` dimensions."""
    centres = np.random.default_rng(1234).normal(0.0, 1.0, (classes, features))  # the same task
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0.0, spread, (n, features))
    return x.astype(np.float32), y.astype(np.int64)


def save(path: str, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically: a temporary file in the same folder, then a rename."""
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=".", help="folder for blobs_train.npz and blobs_test.npz")
    p.add_argument("--train", type=int, default=600, help="training samples")
    p.add_argument("--test", type=int, default=200, help="test samples")
    p.add_argument("--features", type=int, default=20, help="values per sample")
    p.add_argument("--classes", type=int, default=4, help="number of classes")
    p.add_argument("--spread", type=float, default=2.0, help="noise around each centre")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for name, n in (("train", a.train), ("test", a.test)):
        x, y = make(n, a.features, a.classes, a.spread, rng)
        save(os.path.join(a.out, f"blobs_{name}.npz"), x=x, y=y)
        print(f"{os.path.join(a.out, f'blobs_{name}.npz')}: x {x.shape}, y {y.shape}, "
              f"{a.classes} classes")


if __name__ == "__main__":
    main()
