"""End to end against PyTorch: same initial weights, same data, same numbers.

The torch side is :func:`experiments.torch_ref.to_torch`, built from the same realized
graph with the weights copied in, trained with ``torch.optim`` (``foreach=False``).

Tolerances (weights are U(+-1/sqrt(fan_in)) at init, 0.015..0.3 for these models):

* ``rtol=1e-4`` as asked; ``atol=1e-5`` (1e-3 of the smallest weight scale) for the
  weights that are near zero. With SGD a weight's error is lr x the float32 rounding
  of its gradients, ~1e-8 measured; the bound has three orders of magnitude to spare.
* Adam scales every element's update to about ``lr``, whatever the size of its gradient.
  Where the gradient plus weight decay cancels to the size of ``eps`` (1e-8), float32
  rounding of that sum (~1e-9) moves the element's first update by up to ~lr/10: on
  mlp we measured 5.3e-5 between nnfleet and torch, and 5.6e-5 between torch in
  float32 and torch in float64. So Adam's atol is lr/10 = 1e-4.
* Losses are compared with ``rtol=1e-5`` (measured ~1e-7).

ResNet-18 is compared step by step from a shared state (see
``test_resnet18_each_step_matches_torch`` for why five free-running steps cannot agree
to 1e-4 in float32, for PyTorch against itself either).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import device_runtime as dr  # noqa: E402
from device_runtime.data import synthetic_classification  # noqa: E402
from experiments.torch_ref import (  # noqa: E402
    make_torch_optimizer,
    to_torch,
    torch_step,
    torch_weights_to_dict,
)

torch.set_num_threads(2)

STEPS = 5
HP: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 5e-4},
}
RTOL = 1e-4
ATOL = {"sgd": 1e-5, "adam": 1e-4}
LOSS_RTOL = 1e-5
# Batch 32 where a step is cheap; 8 for vgg16 and resnet18, whose steps take ~0.5 s and
# ~1 s at batch 32 on 2 cores (more on a shared machine): x4 less work keeps this file
# within its time budget. Fewer activations also means fewer ReLU inputs within rounding
# of zero (see the resnet18 test): at batch 32, vgg16 + Adam has one, and there torch
# float32 differs from torch float64 by 2e-4 on a conv1_2 weight while nnfleet agrees
# with float64 to 4e-6.
BATCH = {"mlp": 32, "lenet5": 32, "vgg16": 8, "resnet18": 8}


def _setup(name: str, opt: str, batch: int, clip: float | None = None):  # type: ignore[no-untyped-def]
    m = dr.build(name, seed=0)
    x, y = synthetic_classification(m.input_shape, n=batch * STEPS, seed=1)
    module = to_torch(m, batch).train()  # copies the initial weights
    m.compile(batch_size=batch, optimizer=opt, clip_grad_norm=clip, **HP[opt])
    topt = make_torch_optimizer(opt, [p for p in module.parameters() if p.requires_grad],
                                **HP[opt])
    return m, module, topt, x, y


def _rows(a: np.ndarray, step: int, batch: int) -> np.ndarray:
    return a[step * batch:(step + 1) * batch]


def _assert_weights_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                          rtol: float, atol: float) -> None:
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("name", sorted(dr.BUILTINS))
def test_weights_round_trip_through_torch(name: str) -> None:
    # Prepare
    m = dr.build(name, seed=3)
    # Execute
    back = torch_weights_to_dict(to_torch(m, 2))
    # Assert: every parameter and statistic, bit for bit, in nnfleet's layout
    want = m.get_weights()
    assert set(back) == set(want)
    for k in want:
        np.testing.assert_array_equal(back[k], want[k], err_msg=k)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg16"])
def test_training_matches_torch(name: str, opt: str) -> None:
    # Prepare
    batch = BATCH[name]
    m, module, topt, x, y = _setup(name, opt, batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # Execute
    hist = m.fit(x, y, steps=STEPS, shuffle=False)
    want_losses = [torch_step(module, topt, _rows(xt, s, batch), _rows(yt, s, batch))
                   for s in range(STEPS)]
    # Assert
    np.testing.assert_allclose(hist.losses, want_losses, rtol=LOSS_RTOL)
    _assert_weights_close(m.get_weights(), torch_weights_to_dict(module), RTOL, ATOL[opt])


@pytest.mark.parametrize("name,opt,clip", [("mlp", "sgd", 1.0), ("lenet5", "adam", 0.25)])
def test_clip_grad_norm_matches_torch(name: str, opt: str, clip: float) -> None:
    # Prepare
    batch = BATCH[name]
    m, module, topt, x, y = _setup(name, opt, batch, clip=clip)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # Execute
    hist = m.fit(x, y, steps=STEPS, shuffle=False)
    want_losses = [torch_step(module, topt, _rows(xt, s, batch), _rows(yt, s, batch), clip)
                   for s in range(STEPS)]
    # Assert: the clip was active (else this would test nothing), and the numbers agree
    norm = getattr(m.train_executor, "last_grad_norm", None)
    assert norm is not None and norm > clip, f"gradient norm {norm} does not exceed clip {clip}"
    np.testing.assert_allclose(hist.losses, want_losses, rtol=LOSS_RTOL)
    _assert_weights_close(m.get_weights(), torch_weights_to_dict(module), RTOL, ATOL[opt])


def _load_into_torch(m: dr.Model, module: Any, topt: Any) -> None:
    """Copy nnfleet's weights, BN statistics and optimizer state into the torch side."""
    w = m.get_weights()
    assert m.optimizer is not None
    state, it = m.optimizer.state_dict(), m.optimizer.iteration

    def conv(a: np.ndarray, key: str, transpose: bool) -> torch.Tensor:
        a = a.reshape(w[key].shape)
        return torch.from_numpy(np.ascontiguousarray(a.T if transpose else a))

    with torch.no_grad():
        for key, (attr, pname, transpose) in module.param_map.items():
            t = getattr(getattr(module, attr), pname)
            t.copy_(conv(w[key], key, transpose))
            if it == 0 or f"{key}#0" not in state:
                continue  # torch starts its momentum / moments itself on the first step
            if isinstance(topt, torch.optim.SGD):
                topt.state[t] = {"momentum_buffer": conv(state[f"{key}#0"], key, transpose)}
            else:
                topt.state[t] = {"step": torch.tensor(float(it)),
                                 "exp_avg": conv(state[f"{key}#0"], key, transpose),
                                 "exp_avg_sq": conv(state[f"{key}#1"], key, transpose)}


def _relnorm(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(scale)), 1e-30))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_resnet18_each_step_matches_torch(opt: str) -> None:
    """ResNet-18 with batch-norm in training mode, five steps, each from a shared state.

    Why not five free-running steps: a ReLU input within float32 rounding of zero takes
    one side in one implementation and the other side in the other (one element; at
    batch 8 there is about one such element per step). Batch-norm's backward spreads that
    element over its channel, which changes some gradients by ~1e-2 (relative), and
    training amplifies the difference: after five steps PyTorch float32 and PyTorch
    float64 disagree by 650x this file's tolerance (losses by 2e-2), and so do nnfleet
    and PyTorch. Starting every step from the same weights, statistics and optimizer
    state (copied from nnfleet into torch) keeps the comparison at one step's rounding:
    losses and running statistics must agree tightly; optimizer state (momentum, Adam
    moments: proportional to gradients) per tensor within 5% in norm (measured: <1e-5
    with no flipped ReLU, <7.4e-3 with one); weights elementwise within the file's
    tolerance except for the few elements such a flip touches.
    """
    # Prepare
    batch = BATCH["resnet18"]
    m, module, topt, x, y = _setup("resnet18", opt, batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert m.optimizer is not None
    for step in range(STEPS):
        _load_into_torch(m, module, topt)
        before = m.get_weights()
        # Execute
        hist = m.fit(_rows(x, step, batch), _rows(y, step, batch), steps=1, shuffle=False)
        loss = torch_step(module, topt, _rows(xt, step, batch), _rows(yt, step, batch))
        # Assert
        np.testing.assert_allclose(hist.losses[0], loss, rtol=LOSS_RTOL, err_msg=f"step {step}")
        got, want = m.get_weights(), torch_weights_to_dict(module)
        state = m.optimizer.state_dict()
        bad = total = 0
        for key, (attr, pname, transpose) in module.param_map.items():
            where = f"{key} at step {step}"
            if ":moving_" in key:  # forward quantities: no ReLU flip reaches them
                np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL["sgd"],
                                           err_msg=where)
                continue
            t = getattr(getattr(module, attr), pname)
            names = ["momentum_buffer"] if opt == "sgd" else ["exp_avg", "exp_avg_sq"]
            for i, sname in enumerate(names):
                tv = topt.state[t][sname].numpy()
                tv = tv.T if transpose else tv
                mine = state[f"{key}#{i}"].reshape(tv.shape)
                assert _relnorm(mine, tv, tv) <= 5e-2, f"{sname} of {where}"
            if opt == "sgd":  # the update itself, in norm
                assert _relnorm(got[key], want[key], want[key] - before[key]) <= 5e-2, where
            out = np.abs(got[key] - want[key]) > ATOL[opt] + RTOL * np.abs(want[key])
            bad += int(out.sum())
            total += out.size
        # Measured: at most 1.8e-5 of the elements with SGD, 7.1e-3 with Adam (whose first
        # update is about lr * sign(gradient), so a flipped ReLU flips whole signs).
        limit = 1e-3 if opt == "sgd" else 2e-2
        assert bad <= limit * total, f"step {step}: {bad} of {total} weights differ"


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", sorted(dr.BUILTINS))
def test_inference_matches_torch_eval(name: str) -> None:
    # Prepare: non-trivial batch-norm statistics, so inference mode is really exercised
    m = dr.build(name, seed=0)
    rng = np.random.default_rng(0)
    w = m.get_weights()
    for k, a in w.items():
        if k.endswith((":gamma", ":moving_variance")):
            w[k] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif k.endswith((":beta", ":moving_mean")):
            w[k] = rng.normal(0.0, 0.1, a.shape).astype(np.float32)
    m.set_weights(w)
    x, _ = synthetic_classification(m.input_shape, n=20, seed=2)
    module = to_torch(m, 8, logits=False).eval()  # eval: running stats, no dropout
    # Execute: batches of 8 and a last partial batch of 4
    got = m.predict(x, batch_size=8)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    # Assert (outputs are O(0.1); measured differences ~1e-7)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
