"""Write a fleet's own data as ``nnfleet simulate`` reads it (``[data] kind = "npz_dir"``):
one ``device-NNN.npz`` per device in a folder, each with ``x``, ``y`` (its training data)
and ``x_test``, ``y_test`` (its own test split).

Every device draws Gaussian blobs (as ``make_blobs_npz.py``) with its own label mix,
Dirichlet(``--alpha``) over the classes (small alpha: each device sees few classes), and
its own number of samples, from a fixed seed::

    python examples/make_fleet_npz.py --out fleet --devices 20
    nnfleet train examples/mlp.ini --data fleet/device-000.npz     # one device's data

then in an experiment config: ``[data]`` with ``kind = "npz_dir"`` and ``path = "fleet"``
(relative to the config file's folder).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="fleet", help="folder for one .npz per device")
    p.add_argument("--devices", type=int, default=20, help="number of devices")
    p.add_argument("--features", type=int, default=20, help="values per sample")
    p.add_argument("--classes", type=int, default=4, help="number of classes")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew parameter")
    p.add_argument("--min-samples", type=int, default=40, help="fewest samples on a device")
    p.add_argument("--max-samples", type=int, default=120, help="most samples on a device")
    p.add_argument("--test-fraction", type=float, default=0.25, help="each device's test share")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole fleet")
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = np.random.default_rng(1234).normal(0.0, 1.0, (a.classes, a.features))
    os.makedirs(a.out, exist_ok=True)
    for d in range(a.devices):
        n = int(rng.integers(a.min_samples, a.max_samples + 1))
        mix = rng.dirichlet(np.full(a.classes, a.alpha))
        y = rng.choice(a.classes, size=n, p=mix).astype(np.int64)
        x = (centres[y] + rng.normal(0.0, 1.0, (n, a.features))).astype(np.float32)
        k = max(1, round(a.test_fraction * n))
        path = os.path.join(a.out, f"device-{d:03d}.npz")
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, x=x[k:], y=y[k:], x_test=x[:k], y_test=y[:k])
        os.replace(tmp, path)  # atomically: a reader never sees half a file
    print(f"{a.devices} devices in {a.out}/ ({a.features} features, {a.classes} classes, "
          f"Dirichlet({a.alpha}) labels)")


if __name__ == "__main__":
    main()
