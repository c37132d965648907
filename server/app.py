"""The Flower ``ServerApp``: Flower's strategies over the shared layers only.

The initial ArrayRecord holds only the shared parameters (personal ones never travel),
so whatever strategy runs aggregates exactly those. The same app runs on Flower's
simulation runtime (``flwr run .``), on a real SuperLink, and on nnfleet's fleet engine,
which implements Flower's ``Grid``.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run -c``): ``model``,
``model-seed``, ``personal``, ``num-rounds``, ``strategy`` (+ ``strategy-args`` JSON),
``fraction-train``, ``fraction-evaluate``, ``min-nodes``, ``seed``, ``timeout``,
``result-path`` (the final shared weights as ``.npz``, and Flower's aggregated metrics
per round beside it as ``.json``) and the device keys of
:data:`DEVICE_KEYS`, which are forwarded to every device in the message's ConfigRecord.
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

from device_runtime.device import build_model, split_keys  # noqa: E402
from device_runtime.weights import save_npz_atomic  # noqa: E402

from .strategies import make_strategy  # noqa: E402

# config keys the server forwards to devices (see device_runtime.device)
DEVICE_KEYS = ("model", "model-seed", "personal", "local-epochs", "local-steps", "head-epochs",
               "prox-mu", "ditto-lambda", "personal-epochs", "finetune-epochs", "optimizer", "lr",
               "momentum", "weight-decay", "batch-size", "optimizer-state", "seed", "eval-before",
               "eval-after")


def initial_shared(run_config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's seeded initial weights, shared part only."""
    model = build_model(str(run_config.get("model", "mlp")), int(run_config.get("model-seed", 0)))
    shared, _ = split_keys(model, {"personal": run_config.get("personal", "")})
    w = model.get_weights()
    return {k: w[k] for k in shared}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def device_config(run_config: dict[str, Any]) -> ConfigRecord:
    return ConfigRecord({k: run_config[k] for k in DEVICE_KEYS if k in run_config})


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured strategy for ``num-rounds`` rounds over the shared layers."""
    cfg = dict(context.run_config)
    random.seed(int(cfg.get("seed", 0)))  # Flower samples nodes with the random module
    strategy = make_strategy(str(cfg.get("strategy", "fedavg")),
                             float(cfg.get("fraction-train", 1.0)),
                             float(cfg.get("fraction-evaluate", 1.0)), int(cfg.get("min-nodes", 2)),
                             cfg.get("strategy-args"))
    result = strategy.start(grid=grid, initial_arrays=to_record(initial_shared(cfg)),
                            num_rounds=int(cfg.get("num-rounds", 3)),
                            timeout=float(cfg.get("timeout", 3600)),
                            train_config=device_config(cfg), evaluate_config=device_config(cfg))
    final = {k: a.numpy() for k, a in result.arrays.items()} or initial_shared(cfg)
    context.state["final-arrays"] = to_record(final)
    if cfg.get("result-path"):  # the final shared weights, and Flower's metrics per round
        path = str(cfg["result-path"])
        save_npz_atomic(path, final)
        history = {"train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
                   "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}}
        with open(os.path.splitext(path)[0] + ".json", "w") as f:
            json.dump(history, f, indent=1)
