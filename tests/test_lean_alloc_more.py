"""Training without numba allocates almost nothing, for every kind of layer and optimizer
the lean kernels cover (kernels/lean_optim, lean_pool, lean_seq, lean_misc, lean_elem and
lean_loss).

Each case trains in a fresh NNFLEET_NO_NUMBA=1 interpreter (kernels are chosen once per
process), measures the peak bytes allocated over three training steps, and its losses
are compared with this process's numba run. Peak allocation per case, measured (3 steps,
numpy 2.4): with the numpy references -> with the lean kernels, in bytes:

    mlp + adam        5 620 979 ->  5 753    mlp + adamw       5 620 979 ->  5 753
    lenet5 (maxpool)  3 235 084 -> 71 034    lstm                494 328 -> 18 398
    gru                 427 928 -> 18 479    rnn (256 units)     263 264 -> 34 708
    attention         1 641 152 ->  5 871    layer norm        1 382 976 ->  5 791
    embedding           505 232 ->  6 641    sequence stack    1 383 288 -> 19 371
    conv1d + clipping   164 640 -> 27 075
    mlp with tanh, sigmoid, swish, leaky relu, dropout, L2:   2 409 083 ->  5 984

What remains is numpy's own fixed iteration buffer (at most 64 KiB), which it takes
for an in-place add into a strided view (max pooling's and col2im's window slices, a
recurrent layer's time-step slice of dy) or a broadcast operand, and a few views and
Python scalars: nothing that grows with the model or the batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from device_runtime.kernels._jit import USE_NUMBA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND = 128 * 1024  # half test_lean_runtime's bound; every case measured < 100 KiB

MODELS = """
import numpy as np
import device_runtime.models as dm
from device_runtime import Model, layer

T, F, V = 16, 64, 200


def seq(*mid):
    return [layer("input", "in", input_shape=f"1:{T}:{F}"),
            layer("fully_connected", "pre", unit=F), *mid,
            layer("flatten", "flat"), layer("fully_connected", "head", unit=10)]


CASES = {
    "mlp_adam": (dm.mlp, "adam", False),
    "mlp_adamw": (dm.mlp, "adamw", False),
    "lenet5": (dm.lenet5, "sgd", False),
    "lstm": (lambda: seq(layer("lstm", "r", unit=128, return_sequences=True)), "sgd", False),
    "gru": (lambda: seq(layer("gru", "r", unit=128, return_sequences=True)), "sgd", False),
    "rnn": (lambda: seq(layer("rnn", "r", unit=256, return_sequences=True)), "sgd", False),
    "attention": (lambda: seq(layer("multi_head_attention", "mha", num_heads=4)), "sgd", False),
    "layer_norm": (lambda: seq(layer("layer_normalization", "ln")), "sgd", False),
    "embedding": (lambda: [layer("input", "in", input_shape=f"1:1:{T}"),
                           layer("embedding", "emb", in_dim=V, out_dim=F),
                           layer("flatten", "flat"), layer("fully_connected", "head", unit=10)],
                  "sgd", True),
    "mlp_activations_dropout_l2": (lambda: [
        layer("input", "in", input_shape="784"),
        layer("fully_connected", "fc1", unit=256, activation="tanh",
              weight_regularizer="l2norm", weight_regularizer_constant=1e-3),
        layer("dropout", "drop", dropout_rate=0.2),
        layer("fully_connected", "fc2", unit=128, activation="sigmoid"),
        layer("fully_connected", "fc3", unit=64, activation="swish"),
        layer("fully_connected", "fc4", unit=32, activation="leaky_relu"),
        layer("fully_connected", "out", unit=10)], "sgd", False),
    "sequence_stack": (lambda: [  # tests/test_models_seq.py's, with adam
        layer("input", "in", input_shape=f"1:1:{T}"),
        layer("embedding", "emb", in_dim=V, out_dim=F),
        layer("positional_encoding", "pe"),
        layer("multi_head_attention", "mha", num_heads=2),
        layer("layer_normalization", "ln"),
        layer("lstm", "lstm", unit=64, return_sequences=True),
        layer("gru", "gru", unit=64),
        layer("fully_connected", "out", unit=10)], "adam", True),
    "conv1d_clipped": (lambda: [
        layer("input", "in", input_shape="4:1:256"),
        layer("conv1d", "c1", filters=16, kernel_size=5, padding=2, activation="relu"),
        layer("conv1d", "c2", filters=16, kernel_size=3, stride=2, dilation=2, padding=2),
        layer("flatten", "flat"), layer("fully_connected", "out", unit=10)], "sgd", False),
}
CLIP = {"conv1d_clipped": 1.0}  # the gradient norm kernel too


def make(name):
    build, opt, ids = CASES[name]
    m = Model(build(), loss="cross_softmax", seed=0).compile(
        batch_size=32, optimizer=opt, lr=0.01, clip_grad_norm=CLIP.get(name))
    rng = np.random.default_rng(0)
    shape = (96,) + tuple(m.input_shape)
    x = (rng.integers(0, V, shape) if ids else rng.normal(size=shape)).astype(np.float32)
    return m, x, rng.integers(0, 10, 96)
"""

CHILD = MODELS + """
import json, sys
from tests.helpers import peak_alloc_during_steps
m, x, y = make(sys.argv[1])
losses = m.fit(x, y, steps=3, shuffle=False).losses
alloc = peak_alloc_during_steps(m, x, y)
print(json.dumps({"losses": losses, "alloc": alloc, "numba": "numba" in sys.modules}))
"""

NAMES = ["mlp_adam", "mlp_adamw", "lenet5", "lstm", "gru", "rnn", "attention", "layer_norm",
         "embedding", "mlp_activations_dropout_l2", "sequence_stack", "conv1d_clipped"]


@pytest.mark.parametrize("name", NAMES)
def test_training_without_numba_allocates_little_and_matches_numba(name: str) -> None:
    env = dict(os.environ, NNFLEET_NO_NUMBA="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["numba"]
    assert got["alloc"] < BOUND, got["alloc"]
    if not USE_NUMBA:
        pytest.skip("numba is off here: nothing to compare with")
    ns: dict = {}
    exec(MODELS, ns)  # noqa: S102 - the same model definitions as the child's
    m, x, y = ns["make"](name)
    want = m.fit(x, y, steps=3, shuffle=False).losses
    # bit-identical kernels (Adam, pooling, embedding, dropout, the element-wise maths)
    # and float32 rounding (attention, layer-norm and softmax sums in another order,
    # numpy's exp/tanh): measured here, the losses differ by at most 6e-16 relative
    # (the float64 loss sums alone); 1e-6 leaves room for a libm/numpy ulp elsewhere
    np.testing.assert_allclose(got["losses"], want, rtol=1e-6)
