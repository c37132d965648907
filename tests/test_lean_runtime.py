"""The runtime without numba (NNFLEET_NO_NUMBA=1 / ``--kernels numpy``), as a board runs it.

kernels/lean.py has allocation-free numpy versions of every kernel resnet18 trains with
(forward, and conv, batch-norm, ReLU and pooling backward): such a process never loads
numba or LLVM (~130 MiB), and its training step still allocates nothing that grows with
the model, frozen backbone or not. Each case runs in
a fresh interpreter, since the kernels are chosen once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import device_runtime as dr
from device_runtime.data import synthetic_classification
from device_runtime.kernels._jit import USE_NUMBA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, STEPS = 8, 3

CHILD = f"""
import json, sys
import numpy as np
import device_runtime as dr
from device_runtime.data import synthetic_classification
from tests.helpers import peak_alloc_during_steps
m = dr.build("resnet18")
if sys.argv[1] == "frozen":
    m.freeze(m.specs[-2].name)
m.compile(batch_size={BATCH}, optimizer="sgd", lr=0.05)
x, y = synthetic_classification(m.input_shape, n={BATCH * STEPS}, seed=0)
losses = m.fit(x, y, steps={STEPS}, shuffle=False).losses
alloc = peak_alloc_during_steps(m, x, y)
print(json.dumps({{"losses": losses, "alloc": alloc, "numba": "numba" in sys.modules,
                  "llvmlite": "llvmlite" in sys.modules}}))
"""


def _child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NNFLEET_NO_NUMBA="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("mode", ["frozen", "trained"])
def test_resnet18_without_numba_allocates_nothing_and_matches_numba(mode: str) -> None:
    # frozen: forward kernels only; trained: also conv, batch-norm, ReLU and average
    # pooling backward (kernels/lean.py)
    proc = _child(CHILD, mode)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["numba"] and not got["llvmlite"]
    # numpy's own fixed casting buffers (64 KiB each), a mask block, per-channel arrays:
    # not the megabytes of a conv's columns or a batch norm's input (with the numpy
    # references, 48 MiB frozen and 64 MiB trained)
    assert got["alloc"] < 256 * 1024, got["alloc"]
    if not USE_NUMBA:
        pytest.skip("numba is off here: nothing to compare with")
    m = dr.build("resnet18")
    if mode == "frozen":
        m.freeze(m.specs[-2].name)
    m.compile(batch_size=BATCH, optimizer="sgd", lr=0.05)
    x, y = synthetic_classification(m.input_shape, n=BATCH * STEPS, seed=0)
    want = m.fit(x, y, steps=STEPS, shuffle=False).losses
    # same operations; only the float64 batch-norm sums (and, trained, the other kernels'
    # references) run in another order: the first step agrees to float32 precision, and
    # a trained resnet18 then drifts (ReLU kinks flip: see test_vs_torch), a little
    np.testing.assert_allclose(got["losses"][0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got["losses"], want, rtol=1e-5 if mode == "frozen" else 1e-3)


def test_cli_kernels_numpy_in_a_fresh_process() -> None:
    proc = _child("import sys; from device_runtime.cli import main; r = main(sys.argv[1:]); "
                  "print('numba loaded:', 'numba' in sys.modules); sys.exit(r)",
                  "train", "mlp", "--kernels", "numpy", "--steps", "2", "--samples", "64",
                  "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-2])["kernels"] == "numpy"
    assert lines[-1] == "numba loaded: False"


@pytest.mark.skipif(not USE_NUMBA, reason="numba is off: numpy is what this process runs")
def test_cli_kernels_numpy_after_numba_loaded_is_one_line_error(capsys) -> None:
    from device_runtime.cli import main

    assert main(["train", "mlp", "--kernels", "numpy", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already loaded the numba kernels" in err
