"""Max pooling that keeps its argmax for backward instead of its input.

The forward writes each window's maximum and where it is (an offset in the window); the
backward routes dy there. Both must give the bits of the kernels that recompute the
argmax from the kept input (themselves checked against numpy and PyTorch in
test_kernels_pool.py), for every tie, NaN, -inf and padding case, with numba and without;
a model must train to the same weights either way, and the plan must no longer keep a
max pool's input until backward.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import lean_pool, pool
from device_runtime.layers import pooling
from device_runtime.layers.pooling import argmax_dtype
from device_runtime.model import Model
from device_runtime.planner import check_plan
from device_runtime.spec import layer
from tests.kernel_cases import F32, POOL_CASES, geom, pool_arrays

IMPLS = {"numba": (pool.maxpool2d_fwd_arg_numba, pool.maxpool2d_bwd_arg_numba),
         "numpy": (lean_pool.maxpool2d_fwd_arg, lean_pool.maxpool2d_bwd_arg)}


def _recomputed(x: np.ndarray, dy: np.ndarray, g: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    y, dx = np.empty_like(dy), np.empty_like(x)
    pool.maxpool2d_fwd_numba(x, y, *g)
    pool.maxpool2d_bwd_numba(x, dy, dx, *g)
    return y, dx


def _kept(impl: str, x: np.ndarray, dy: np.ndarray, g: tuple[int, ...],
          dtype: type = np.uint8) -> tuple[np.ndarray, ...]:
    fwd, bwd = IMPLS[impl]
    none = int(np.iinfo(dtype).max)
    y, arg = np.full_like(dy, 7.0), np.zeros(dy.shape, dtype)
    dx = np.full_like(x, np.nan)  # overwritten: a skipped element would stay NaN
    fwd(x, y, arg, none, *g)
    bwd(arg, dy, dx, none, *g)
    return y, dx, arg


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.tobytes() == b.tobytes() or (np.array_equal(a, b, equal_nan=True)
                                          and np.array_equal(np.signbit(a), np.signbit(b)))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("kind", ["random", "ties", "nan", "-inf"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_kept_argmax_gives_the_recomputed_bits(case: tuple[int, ...], kind: str,
                                               impl: str) -> None:
    # Prepare: inputs with many ties, NaNs or -inf (the tie rule matters there)
    x, dy = pool_arrays(case, 11)
    rng = np.random.default_rng(len(kind) + case[0])
    if kind == "ties":
        x = np.round(x).clip(-1, 1)
    elif kind in ("nan", "-inf"):
        x[rng.random(x.shape) < 0.3] = np.nan if kind == "nan" else -np.inf
    g = geom(case)
    # Execute
    y0, dx0 = _recomputed(x, dy, g)
    y, dx, arg = _kept(impl, x, dy, g)
    # Assert: the same bits, and every kept offset lies in its window
    assert _same_bits(y, y0) and _same_bits(dx, dx0), (case, kind)
    assert arg.max() < g[0] * g[1]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_windows_wholly_in_the_padding_keep_none_and_credit_nothing(impl: str) -> None:
    # the third output row's windows lie in the padding: -inf out, "none" kept, no credit
    x = np.array([[[[1, np.nan, 3, np.nan], [0, 2, 5, 4]]]], F32)
    dy = np.arange(1, 7, dtype=F32).reshape(1, 1, 2, 3)
    g = (2, 2, 2, 2, 0, 1)
    y, dx, arg = _kept(impl, x, dy, g)
    np.testing.assert_array_equal(y, [[[[1, np.nan, np.nan], [-np.inf] * 3]]])
    np.testing.assert_array_equal(dx, [[[[1, 2, 0, 3], [0, 0, 0, 0]]]])
    np.testing.assert_array_equal(arg, [[[[1, 0, 0], [255, 255, 255]]]])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_large_windows_keep_wider_offsets(impl: str) -> None:
    # a global max pool of 20x20 has 400 offsets: uint16, with its largest as "none"
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 20, 20)).astype(F32)
    dy = rng.standard_normal((2, 3, 1, 1)).astype(F32)
    g = (20, 20, 1, 1, 0, 0)
    assert argmax_dtype(400) is np.uint16
    y, dx, arg = _kept(impl, x, dy, g, np.uint16)
    y0, dx0 = _recomputed(x, dy, g)
    assert _same_bits(y, y0) and _same_bits(dx, dx0)
    np.testing.assert_array_equal(arg[..., 0, 0], x.reshape(2, 3, 400).argmax(axis=-1))


def test_argmax_dtype_holds_every_offset_and_none() -> None:
    assert [argmax_dtype(n) for n in (1, 4, 9, 255, 256, 65535, 65536)] == [
        np.uint8, np.uint8, np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]


def _vgg_like(seed: int) -> Model:
    """Conv, ReLU and overlapping / strided / padded max pools, then a classifier."""
    specs = [layer("input", "in", input_shape="3:12:12"),
             layer("conv2d", "c1", filters=6, kernel_size="3,3", padding="same",
                   activation="relu"),
             layer("pooling2d", "p1", pooling="max", pool_size="3,3", stride="2,2",
                   padding="1"),
             layer("conv2d", "c2", filters=5, kernel_size="3,3", padding="same",
                   activation="relu"),
             layer("pooling2d", "p2", pooling="max", pool_size="2,2", stride="2,2"),
             layer("pooling2d", "p3", pooling="global_max"),
             layer("flatten", "flat"), layer("fully_connected", "fc", unit=4)]
    return Model(specs, loss="cross_softmax", seed=seed)


def _train(seed: int, keep: bool, monkeypatch) -> tuple[dict[str, np.ndarray], int]:
    monkeypatch.setattr(pooling, "KEEP_ARGMAX", keep)
    m = _vgg_like(seed)
    m.compile(batch_size=4, optimizer="sgd", lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((12, 3, 12, 12)), 1).astype(F32)  # ties in windows
    y = rng.integers(0, 4, 12)
    h = m.fit(x, y, steps=4, shuffle=False)
    assert np.all(np.isfinite(h.losses))
    st = m.train_executor.step
    check_plan(st.sizes, st.intervals, st.plan, st.alignment)
    out = m.get_weights(), st.plan.pool_bytes
    m.close()
    return out


@pytest.mark.parametrize("seed", range(3))
def test_a_model_trains_to_the_same_weights_with_the_argmax_kept(seed: int,
                                                                 monkeypatch) -> None:
    # Prepare: poisoned pools, so a read of an unwritten argmax shows as NaN
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    # Execute
    kept, pool_kept = _train(seed, True, monkeypatch)
    rec, pool_rec = _train(seed, False, monkeypatch)
    # Assert
    assert [k for k in rec if not np.array_equal(rec[k], kept[k])] == []
    assert pool_kept <= pool_rec


def test_vgg16_no_longer_keeps_a_pooled_conv_output_until_backward(monkeypatch) -> None:
    from device_runtime import build
    from device_runtime.stepplan import StepPlan

    def pool_bytes(keep: bool) -> int:
        monkeypatch.setattr(pooling, "KEEP_ARGMAX", keep)
        m = build("vgg16")
        m.compile(batch_size=32, optimizer="sgd")
        g = m._graph(32, backward=True, with_loss=True)
        return StepPlan(g, m.planner, swap="off").plan.pool_bytes

    # conv1_2's output (32 x 64 x 32 x 32 floats, 8 MiB) was kept for pool1's backward;
    # the argmax that replaces it is a byte per pooled output (32 x 64 x 16 x 16)
    conv1_2, arg1 = 32 * 64 * 32 * 32 * 4, 32 * 64 * 16 * 16
    assert pool_bytes(False) - pool_bytes(True) >= conv1_2 - arg1
