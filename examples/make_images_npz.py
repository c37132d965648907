"""Write a small image data set as nnfleet reads it: ``images_train.npz`` and
``images_test.npz``, each with ``x`` float32 ``(N, 1, 12, 12)`` and ``y`` int64 ``(N,)``.

Four classes of 12x12 patterns (a horizontal bar, a vertical bar, a diagonal, a square
outline) at random positions, with noise, from a fixed seed::

    python examples/make_images_npz.py --out data
    nnfleet train examples/cnn.ini --data data/images_train.npz --valid-split 0.1 --save w.npz
    nnfleet train lenet5 --input-shape 1:16:16 --classes 4 --data data/images16_train.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np

CLASSES = ("horizontal", "vertical", "diagonal", "square")


def pattern(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` image of class ``kind``, shifted at random."""
    img = np.zeros((size, size), np.float32)
    r, c = rng.integers(1, size - 5, 2)
    if kind == 0:
        img[r, c:c + 5] = 1.0
    elif kind == 1:
        img[r:r + 5, c] = 1.0
    elif kind == 2:
        img[np.arange(5) + r, np.arange(5) + c] = 1.0
    else:
        img[r:r + 4, c:c + 4] = 1.0
        img[r + 1:r + 3, c + 1:c + 3] = 0.0
    return img


def make(n: int, size: int, noise: float, rng: np.random.Generator
         ) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(CLASSES), n)
    x = np.stack([pattern(int(k), size, rng) for k in y])[:, None]  # (N, 1, H, W)
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=".", help="folder for the .npz files")
    p.add_argument("--size", type=int, default=12, help="image height and width (>= 8)")
    p.add_argument("--prefix", default="images", help="file names: PREFIX_train.npz, ...")
    p.add_argument("--train", type=int, default=512, help="training samples")
    p.add_argument("--test", type=int, default=128, help="test samples")
    p.add_argument("--noise", type=float, default=0.3, help="Gaussian noise on every pixel")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    a = p.parse_args()
    if a.size < 8:
        p.error(f"--size must be >= 8, got {a.size}")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for name, n in (("train", a.train), ("test", a.test)):
        x, y = make(n, a.size, a.noise, rng)
        path = os.path.join(a.out, f"{a.prefix}_{name}.npz")
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)  # atomically: a reader never sees half a file
        print(f"{path}: x {x.shape}, y {y.shape}, classes {', '.join(CLASSES)}")


if __name__ == "__main__":
    main()
