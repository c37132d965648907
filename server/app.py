"""The Flower ``ServerApp``: Flower's strategies over the shared layers only.

The initial ArrayRecord holds only the shared parameters (personal ones never travel),
so whatever strategy runs aggregates exactly those. The same app runs on Flower's
simulation runtime (``flwr run .``), on a real SuperLink, and on nnfleet's fleet engine,
which implements Flower's ``Grid``.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run -c``): ``model``,
``model-seed``, ``personal``, ``num-rounds``, ``strategy`` (+ ``strategy-args`` JSON),
``fraction-train``, ``fraction-evaluate``, ``min-nodes``, ``seed``, ``timeout``,
``result-path`` (the final shared weights as ``.npz``, and beside it as ``.json`` Flower's
aggregated metrics per round and the rejected replies), the screening of replies
(``screen-updates``, ``max-update-norm``, ``max-norm-over-median``, ``max-num-examples``:
see server/screen.py)
and the device keys of :data:`DEVICE_KEYS`, which are forwarded to every device in the
message's ConfigRecord.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from device_runtime.device import forwarded_keys, split_keys  # noqa: E402
from device_runtime.modelspec import load_model  # noqa: E402
from device_runtime.weights import atomic_write, save_npz_atomic  # noqa: E402

from .rounds import rejection_summary, run_rounds  # noqa: E402
from .screen import ScreenRules  # noqa: E402
from .strategies import make_strategy  # noqa: E402

# config keys the server forwards to devices: the fields of device_runtime.device.DeviceConfig
DEVICE_KEYS = forwarded_keys()


def initial_shared(run_config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's seeded initial weights, shared part only."""
    model, _ = load_model(str(run_config.get("model", "mlp")), int(run_config.get("model-seed", 0)))
    w = model.get_weights()
    shared, _ = split_keys(list(w), str(run_config.get("personal", "")))
    return {k: w[k] for k in shared}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def device_config(run_config: dict[str, Any]) -> ConfigRecord:
    return ConfigRecord({k: run_config[k] for k in DEVICE_KEYS if k in run_config})


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured strategy for ``num-rounds`` rounds over the shared layers,
    rejecting hostile or broken training replies before aggregation (server/screen.py);
    a context whose state holds a stored round continues from it (server/rounds.py)."""
    cfg = dict(context.run_config)
    random.seed(int(cfg.get("seed", 0)))  # Flower samples nodes with the random module
    strategy = make_strategy(str(cfg.get("strategy", "fedavg")),
                             float(cfg.get("fraction-train", 1.0)),
                             float(cfg.get("fraction-evaluate", 1.0)), int(cfg.get("min-nodes", 2)),
                             str(cfg.get("strategy-args") or ""))
    state = run_rounds(strategy, grid, context, to_record(initial_shared(cfg)),
                       num_rounds=int(cfg.get("num-rounds", 3)),
                       timeout=float(cfg.get("timeout", 3600)), train_config=device_config(cfg),
                       evaluate_config=device_config(cfg), rules=ScreenRules.from_run_config(cfg))
    final = {k: a.numpy() for k, a in state.arrays.items()}
    context.state["final-arrays"] = to_record(final)
    if cfg.get("result-path"):  # the final shared weights; metrics and rejections beside them
        path = str(cfg["result-path"])
        save_npz_atomic(path, final)
        result = {**state.history, "rejected": state.rejected,
                  "rejected_summary": rejection_summary(state.rejected)}
        atomic_write(os.path.splitext(path)[0] + ".json",
                     lambda f: f.write(json.dumps(result, indent=1).encode()), ".json")
