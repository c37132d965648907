"""A single sample's conv forward over blocks of output rows (issue 13, kernels/conv_rows.py).

The row kernels must copy exactly the columns of the whole im2col matrix (checked against
the numpy reference on every conv case and window, every element written); the blocks
must cover the rows in order within their byte budget; the blocked forward must compute
PyTorch's convolution; and vgg16's micro-batch-1 floor must no longer be the whole
im2col matrix of its first conv block (2.25 MiB at 32x32).
"""

from __future__ import annotations

import numpy as np
import pytest

import device_runtime as dr
from device_runtime.kernels import conv as K
from device_runtime.kernels import conv_rows as R
from device_runtime.layers import conv as C
from device_runtime.model import Model
from device_runtime.spec import layer
from device_runtime.stepplan import StepPlan
from tests.kernel_cases import CONV_CASES, F32, geom, out_size, rand


@pytest.mark.parametrize("case", CONV_CASES)
def test_row_windows_are_the_columns_of_the_whole_matrix(case: tuple[int, ...]) -> None:
    # Prepare: one sample of the case, its whole im2col matrix
    rng = np.random.default_rng(3)
    _, c, h, w, kh, kw = case[:6]
    oh, ow = out_size(h, kh, case[6], case[8], case[9]), out_size(w, kw, case[7], case[10],
                                                                  case[11])
    x = rand(rng, 1, c, h, w)
    whole = np.empty((c * kh * kw, oh * ow), F32)
    K.im2col_numpy(x, whole, *geom(case), oh, ow)
    windows = {(r0, r1) for r0 in range(oh) for r1 in range(r0 + 1, oh + 1)}
    for r0, r1 in sorted(windows)[:40] + [(0, oh), (oh - 1, oh)]:
        for fn in (R.im2col_rows_numba, R.im2col_rows_lean):
            # Execute: into a NaN-filled block, so an element left unwritten shows
            col = np.full((c * kh * kw, (r1 - r0) * ow), np.nan, F32)
            fn(x, col, *geom(case), oh, ow, r0)
            # Assert
            np.testing.assert_array_equal(col, whole[:, r0 * ow:r1 * ow], err_msg=f"{fn} {r0}")


def test_row_kernels_refuse_a_window_past_the_output() -> None:
    x = np.zeros((1, 2, 5, 5), F32)
    col = np.zeros((18, 2 * 5), F32)
    for fn in (R.im2col_rows_numba, R.im2col_rows_lean):
        with pytest.raises(AssertionError, match="im2col rows"):
            fn(x, col, 3, 3, 1, 1, 1, 1, 5, 5, 4)  # rows 4..6 of 5


def test_row_blocks_cover_the_rows_within_the_budget_and_are_fewest() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        oh, ow, ckk = (int(v) for v in rng.integers(1, 70, 3))
        budget = int(rng.choice([1, int(rng.integers(1, 1 << 18)), 1 << 30]))
        blocks = R.row_blocks(oh, ow, ckk, budget)
        rows = [r for r0, r1 in blocks for r in range(r0, r1)]
        assert rows == list(range(oh))  # in order, each row once, no empty block
        per_row = 4 * ckk * ow
        tallest = max(r1 - r0 for r0, r1 in blocks)
        assert tallest * per_row <= budget or tallest == 1
        assert max(r1 - r0 for r0, r1 in blocks) - min(r1 - r0 for r0, r1 in blocks) <= 1
        if len(blocks) > 1:  # one block fewer would not fit the budget
            n = len(blocks) - 1
            assert -(-oh // n) * per_row > budget


def test_blocked_forward_computes_torchs_convolution(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    # Prepare: single-sample chunks (large maps) with blocks of 2 output rows of c1
    monkeypatch.setattr(C, "BLOCK_BYTES", 4 * 27 * 10 * 2)  # c1: 27 rows x 10 columns
    specs = [layer("input", "in", input_shape="3:9:9"),
             layer("conv2d", "c1", filters=4, kernel_size="3,3", padding="1,0,2,1",
                   stride="1,1"),
             layer("conv2d", "c2", filters=5, kernel_size="2,3", stride="2,1", padding="same")]
    m = Model(specs, loss="mse", seed=4)
    monkeypatch.setattr(C, "pick_chunk", lambda n, hw: 1)
    m.compile(batch_size=2, optimizer="sgd", lr=0.1)
    g = m._graph(2, True, True)
    c1 = g.by_name["c1"].layer
    assert c1.b == 1 and len(c1.fblocks) == 4, c1.fblocks  # 8 output rows, 2 per block
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 9)).astype(F32)
    # Execute
    y = m.predict(x)
    # Assert: against PyTorch
    f = torch.nn.functional
    w = {k: torch.tensor(v) for k, v in m.get_weights().items()}
    t = f.conv2d(f.pad(torch.tensor(x), (2, 1, 1, 0)), w["c1:weight"], w["c1:bias"])
    t = f.conv2d(f.pad(t, (1, 1, 0, 0)), w["c2:weight"], w["c2:bias"], stride=(2, 1))
    np.testing.assert_allclose(y, t.numpy(), rtol=1e-5, atol=1e-5)


def test_vgg16_at_micro_batch_1_has_no_whole_forward_im2col() -> None:
    # Prepare
    m = dr.build("vgg16")
    m.compile(batch_size=32, optimizer="sgd")
    g = m._graph(1, backward=True, with_loss=True, conv_tile=1)
    # Execute
    st = StepPlan(g, m.planner, swap="on", lookahead=0)
    # Assert: every conv's forward scratch is one block, and the floor is under the
    # whole im2col of conv1_2 (64 channels x 9 x 32 x 32 floats = 2.25 MiB)
    for node in g.nodes:
        lay = node.layer
        if isinstance(lay, C.Conv2D) and lay.fblocks:
            col_f = next(t for t in lay.tensors if t.name == "col_f")
            assert 4 * int(np.prod(col_f.shape)) <= C.BLOCK_BYTES, (node.name, col_f.shape)
    assert st.plan.pool_bytes < 64 * 9 * 32 * 32 * 4, st.plan.pool_bytes


@pytest.mark.parametrize("k,rows", [(3, 1), (3, 2), (5, 1), (5, 2), (5, 4)])
def test_in_place_blocked_forward_changes_no_bit(monkeypatch, k: int, rows: int) -> None:
    # Prepare: same-shape convs over blocks of `rows` output rows, on a poisoned pool;
    # in place only when every block has at least the top padding's rows (k // 2)
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    monkeypatch.setattr(C, "pick_chunk", lambda n, hw: 1)
    monkeypatch.setattr(C, "BLOCK_BYTES", 4 * (4 * k * k) * 9 * rows)
    specs = [layer("input", "in", input_shape="4:9:9")] + [
        layer("conv2d", f"c{j}", filters=4, kernel_size=f"{k},{k}", padding="same")
        for j in range(3)]
    x = np.random.default_rng(5).standard_normal((3, 4, 9, 9)).astype(F32)
    out, pools = {}, {}
    for in_place in (False, True):
        monkeypatch.setattr("device_runtime.stepplan.FORWARD_ONLY_IN_PLACE", in_place)
        m = Model(specs, loss="mse", seed=6)
        m.compile(batch_size=3, optimizer="sgd", lr=0.1)
        g = m._graph(3, backward=False, with_loss=False)
        blocks = g.by_name["c1"].layer.fblocks
        assert len(blocks) == -(-9 // rows)
        lowest = min(r1 - r0 for r0, r1 in blocks)
        pools[in_place] = StepPlan(g, m.planner).plan.pool_bytes
        # Execute
        out[in_place] = m.predict(x)
    # Assert: the same numbers, bit for bit, and a smaller pool exactly when staged
    np.testing.assert_array_equal(out[True], out[False])
    assert np.all(np.isfinite(out[True]))
    assert (pools[True] < pools[False]) == (lowest >= k // 2), (pools, blocks)
