"""Conv backward over tiles of input channels (issue 13, layers/conv.py).

The tile only groups fixed product blocks, so any tile must give the untiled run's
numbers bit for bit: checked on random shapes, strides, paddings, blocks, tiles, chunks,
output-row blocks of dW and forward row blocks of single samples, fused and unfused,
momentum SGD and Adam, numba and numpy kernels
(the numpy run in a fresh NNFLEET_NO_NUMBA=1 interpreter), on a poisoned pool, with every
plan checked by planner/check.py; the kernels with a channel offset against their whole
versions; the blocked gradient against PyTorch; the cap fit choosing a tile (alexnet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import device_runtime as dr
from device_runtime.kernels import conv as K
from device_runtime.layers import conv as C
from device_runtime.model import Model
from device_runtime.planner import check_plan
from device_runtime.spec import layer
from tests.kernel_cases import CONV_CASES, F32, geom, out_size, rand

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------- kernels


def _more_channels(case: tuple[int, ...], c: int) -> tuple[int, ...]:
    return (case[0], c, *case[2:])


@pytest.mark.parametrize("case", CONV_CASES[:16])
def test_channel_tile_kernels_equal_the_rows_of_the_whole(case: tuple[int, ...]) -> None:
    # Prepare: 5 channels, a tile of channels c0..c1
    rng = np.random.default_rng(7)
    b, c, h, w, kh, kw = _more_channels(case, 5)[:6]
    oh, ow = out_size(h, kh, case[6], case[8], case[9]), out_size(w, kw, case[7], case[10],
                                                                  case[11])
    kk, ncol = kh * kw, b * oh * ow
    x = rand(rng, b, c, h, w)
    whole = np.empty((c * kk, ncol), F32)
    K.im2col_numba(x, whole, *geom(case), oh, ow)
    dcol = rand(rng, c * kk, ncol)
    dx_whole = np.empty((b, c, h, w), F32)
    K.col2im_numba(dcol, dx_whole, *geom(case), oh, ow)
    for c0, c1 in [(0, 5), (1, 3), (4, 5), (0, 1)]:
        for im2col, col2im in [(K.im2col_numba, K.col2im_numba), (K.im2col_numpy, K.col2im_numpy),
                               (K.im2col_lean, K.col2im_lean)]:
            # Execute
            col = np.full(((c1 - c0) * kk, ncol), np.nan, F32)
            im2col(x, col, *geom(case), oh, ow, c0)
            dx = np.full((b, c, h, w), np.nan, F32)
            col2im(np.ascontiguousarray(dcol[c0 * kk:c1 * kk]), dx, *geom(case), oh, ow, c0)
            # Assert: the tile's rows and channels, bit for bit; other channels untouched
            np.testing.assert_array_equal(col, whole[c0 * kk:c1 * kk])
            np.testing.assert_array_equal(dx[:, c0:c1], dx_whole[:, c0:c1])
            assert np.isnan(dx[:, :c0]).all() and np.isnan(dx[:, c1:]).all()


def test_channel_blocks_are_fixed_and_tiles_group_them() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        c, per = int(rng.integers(1, 600)), int(rng.integers(1, 1 << 16))
        tile = int(rng.choice([0, 1, int(rng.integers(1, 1 << 24))]))
        cblock, tc = C.channel_blocks(c, per, tile, False)
        assert (cblock, C.channel_blocks(c, per, 0, False)[0]) == (cblock, cblock)  # tile-free
        assert 1 <= cblock <= c and 1 <= tc <= c
        assert tc == c if tile == 0 else (tc % cblock == 0 or tc == c)
        if tile and tc < c:  # within the budget unless one block is already more
            assert tc * per <= max(tile, cblock * per)
    assert C.channel_blocks(64, 100, 1, True) == (64, 64)  # a 1x1 direct conv: one block


# ---------------------------------------------------------------------- layers


def _case(seed: int) -> dict:
    """A random two-conv model, batch, blocks, chunking, tiles and optimizer."""
    rng = np.random.default_rng(seed)
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    return {
        "seed": seed, "batch": int(rng.choice([2, 3, 4, 6])),
        "chw": (int(rng.integers(2, 7)), int(rng.integers(kh, 7)), int(rng.integers(kw, 7))),
        "filters": (int(rng.integers(2, 9)), int(rng.integers(1, 13))),
        "kernel": f"{kh},{kw}", "stride": f"{int(rng.integers(1, 3))},{int(rng.integers(1, 3))}",
        "padding": str(rng.choice(["same", "valid", "1", "0,1", "1,0,0,1"])),
        "block_channels": int(rng.integers(1, 4)),  # channels per product block
        "columns": int(rng.choice([1, 2, 1 << 20])),  # > 1: several sample chunks
        "grad_block": int(rng.choice([64, 1 << 20])),  # small: several output-row blocks
        "fused": bool(rng.integers(0, 2)), "adam": bool(rng.integers(0, 2)),
        # a single sample's forward: one output row per block, a few, or all rows
        "fwd_block": int(rng.choice([1, 600, 1 << 20])),
    }


def _model(p: dict) -> Model:
    c, h, w = p["chw"]
    specs = [layer("input", "in", input_shape=f"{c}:{h}:{w}"),
             layer("conv2d", "c1", filters=p["filters"][0], kernel_size=p["kernel"],
                   stride=p["stride"], padding=p["padding"], activation="relu"),
             # fused: so many filters that c2's gradient outweighs its input (it is fused)
             layer("conv2d", "c2", kernel_size="3,3", padding="same",
                   filters=p["filters"][1] + (p["batch"] * (h + 2) * (w + 2) // 9 if p["fused"]
                                              else 0)),
             layer("flatten", "flat"), layer("fully_connected", "fc", unit=3)]
    m = Model(specs, loss="cross_softmax", seed=p["seed"])
    m.fuse_apply = p["fused"]
    return m


def train_case(p: dict, tiles: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Weights after 3 steps of case ``p`` for each conv tile (bytes), plans checked."""
    real_pick, real_blocks = C.pick_chunk, C.channel_blocks
    out = {}
    old, old_block = C.GRAD_BLOCK_BYTES, C.BLOCK_BYTES

    def blocks(c: int, per: int, tile: int, direct: bool, _: int | None = None
               ) -> tuple[int, int]:
        # in channels: product blocks of block_channels, tiles of `tile` (1: one block)
        return real_blocks(c, per, tile * per if tile > 1 else tile, direct,
                           p["block_channels"] * per)
    try:
        C.GRAD_BLOCK_BYTES, C.BLOCK_BYTES = p["grad_block"], p["fwd_block"]
        C.pick_chunk = lambda n, hw: real_pick(n, hw, p["columns"])  # type: ignore[assignment]
        C.channel_blocks = blocks  # type: ignore[assignment]
        for tile in tiles:
            m = _model(p)
            c, h, w = p["chw"]
            m.conv_tile = tile
            kw = {"beta1": 0.9} if p["adam"] else {"momentum": 0.9}
            m.compile(batch_size=p["batch"], optimizer="adam" if p["adam"] else "sgd", lr=0.05,
                      **kw)
            rng = np.random.default_rng(p["seed"])
            x = rng.standard_normal((p["batch"] * 3, c, h, w)).astype(F32)
            y = rng.integers(0, 3, p["batch"] * 3)
            h_ = m.fit(x, y, steps=3, shuffle=False)
            assert np.all(np.isfinite(h_.losses))
            st = m.train_executor.step
            check_plan(st.sizes, st.intervals, st.plan, st.alignment)
            out[tile] = m.get_weights()
            m.close()
    finally:
        C.GRAD_BLOCK_BYTES, C.BLOCK_BYTES = old, old_block
        C.pick_chunk, C.channel_blocks = real_pick, real_blocks  # type: ignore[assignment]
    return out


def _tiles(p: dict) -> list[int]:
    """Whole layers, then tiles of 1 block, 2, 3 and 5 channels."""
    return [0, 1, 2, 3, 5]


def _equal(out: dict[int, dict[str, np.ndarray]]) -> list[str]:
    ref = out[0]
    return [f"tile {t}: {k}" for t, ws in out.items() for k in ref
            if not np.array_equal(ref[k], ws[k])]


@pytest.mark.parametrize("seed", range(12))
def test_any_tile_trains_bit_identical_to_untiled(seed: int, monkeypatch) -> None:
    # Prepare: poisoned pools, so a tile that reads scratch it did not write shows as NaN
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    p = _case(seed)
    # Execute
    out = train_case(p, _tiles(p))
    # Assert
    assert _equal(out) == [], p


CHILD = """
import json, sys
import numpy as np
from tests.test_conv_tile import _case, _tiles, _equal, train_case
bad = {}
for seed in range(int(sys.argv[1])):
    p = _case(seed)
    bad[seed] = _equal(train_case(p, _tiles(p)))
print(json.dumps({"bad": bad, "numba": "numba" in sys.modules}))
"""


def test_any_tile_trains_bit_identical_to_untiled_with_numpy_kernels() -> None:
    env = dict(os.environ, NNFLEET_NO_NUMBA="1", NNFLEET_POISON="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, "8"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["numba"]
    assert all(v == [] for v in got["bad"].values()), got["bad"]


def test_blocked_tiled_gradient_matches_torch(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    # Prepare: one plain SGD step (lr 1) of a conv + fc net, small blocks and tiles
    p = dict(_case(3), block_channels=1, fused=True, adam=False, batch=4,
             chw=(5, 6, 6), filters=(4, 3), kernel="3,3", stride="1,1", padding="same")
    m = _model(p)
    monkeypatch.setattr(C, "BLOCK_BYTES", 4 * 9 * 4 * 36)  # one channel of c1 per block
    m.conv_tile = 4 * 9 * 4 * 36 * 2  # two channels per tile
    m.compile(batch_size=4, optimizer="sgd", lr=1.0)
    c1 = m._graph(4, True, True).by_name["c1"].layer
    assert (c1.cblock, c1.tc, len(c1.tiles)) == (1, 2, 3)
    w0 = m.get_weights()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 6, 6)).astype(F32)
    y = rng.integers(0, 3, 4)
    # Execute
    m.fit(x, y, steps=1, shuffle=False)
    w1 = m.get_weights()
    # Assert: against the same net in PyTorch
    f = torch.nn.functional
    t = {k: torch.tensor(v, requires_grad=True) for k, v in w0.items()}
    a = f.relu(f.conv2d(torch.tensor(x), t["c1:weight"], t["c1:bias"], padding=1))
    a = f.conv2d(a, t["c2:weight"], t["c2:bias"], padding=1).flatten(1)
    loss = f.cross_entropy(a @ t["fc:weight"] + t["fc:bias"], torch.tensor(y))
    loss.backward()
    for k in ("c1:weight", "c2:weight", "c1:bias"):
        np.testing.assert_allclose(w0[k] - w1[k], t[k].grad.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- the cap fit


def test_cap_fit_tiles_alexnet_at_a_cap_only_tiles_fit_and_trains_bit_identical(tmp_path) -> None:
    from device_runtime.cap.fit import MARGIN_BYTES, fit_to_cap
    from device_runtime.stepplan import StepPlan

    # Prepare: a budget between the tiled and the untiled floor of batch 32
    # (alexnet's batch-32 floor is conv scratch: 10.3 MiB whole, 8.6 tiled; vgg16's is
    # not: two 8 MiB blocks swapped back at their own offsets beside a third, 24.25 MiB)
    m = dr.build("alexnet")
    m.compile(batch_size=32, optimizer="sgd", lr=0.01)

    def make(b, tile=0):
        return m._graph(b, backward=True, with_loss=True, conv_tile=tile)

    def floor(b, tile):
        return StepPlan(make(b, tile), m.planner, swap="on", lookahead=0).plan.pool_bytes

    untiled, tiled = floor(32, 0), floor(32, 1)
    assert tiled < untiled - (1 << 20), (tiled, untiled)  # the peak is conv scratch
    cap = 1 << 30
    base = cap - MARGIN_BYTES - (tiled + untiled) // 2
    # Execute
    d = fit_to_cap(make, m.planner, 32, cap, base, 0, 0, "auto", params=m._trainable_sizes())
    # Assert: full batch, a tile, within the budget
    assert d.batch == 32 and d.conv_tile > 0
    assert d.pool_bytes + MARGIN_BYTES + base <= cap
    # and a step with that plan gives the unswapped untiled step's weights, bit for bit
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(F32)
    y = np.arange(32) % 10
    ref = dr.build("alexnet")
    ref.compile(batch_size=32, optimizer="sgd", lr=0.01, swap="off")
    ref.fit(x, y, steps=1, shuffle=False)
    m.conv_tile = d.conv_tile
    m.compile(batch_size=32, optimizer="sgd", lr=0.01, swap="on", lookahead=d.lookahead,
              swap_dir=str(tmp_path))
    m.fit(x, y, steps=1, shuffle=False)
    a, b = ref.get_weights(), m.get_weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    m.close()


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_tiled_step_allocates_almost_nothing(name: str) -> None:
    # the tiled loops slice views only: the same bound as tests/test_no_alloc.py
    from device_runtime.data import synthetic_classification
    from tests.helpers import peak_alloc_during_steps
    from tests.test_no_alloc import LIMIT

    m = dr.build(name)
    m.conv_tile = 1  # the smallest tiles: the most slices
    m.compile(batch_size=8, optimizer="sgd", lr=1e-3, momentum=0.9)
    assert any(n.layer.type == "conv2d" and len(n.layer.tiles) > 1
               for n in m.train_executor.graph.nodes)
    x, y = synthetic_classification(m.input_shape, 10, 16)
    extra = peak_alloc_during_steps(m, x, y)
    assert extra < (LIMIT if K.im2col is not K.im2col_lean else 2 * LIMIT), extra
