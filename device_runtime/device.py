"""The device program: one round of on-device training for federated personalization.

Given the device's own state (its data, settings, personal layers, optimizer state and
whatever the algorithm keeps, such as Ditto's personal model), the shared weights from
the server and the server's config, :func:`run_device` trains under the device's RAM cap
and returns the updated *shared* weights, metrics and the new state. Personal weights
never appear in the returned shared weights. This module knows nothing of Flower: the
Flower ``ClientApp`` (``flower_client.py``) and the fleet engine both call it.

Config keys (hyphenated like Flower's, every value an int, float, str or bool):

====================  =====================================================================
``model``             built-in name, INI path, JSON layer list or ``{"builtin": ..., ...}``
``model-seed``        seed of the initial weights (personal layers start from them)
``personal``          comma-separated patterns of personal layers/keys (``fc3``, ``*bn*``,
                      ``*`` = everything: local-only); matched with fnmatch on the layer
                      name and on the ``layer:param`` key
``local-epochs``      epochs on the local train split (``local-steps`` > 0 overrides)
``head-epochs``       FedRep: epochs on the personal part (shared frozen) before
                      ``local-epochs`` on the shared part (personal frozen)
``prox-mu``           FedProx: adds mu * (w - w_global) to every gradient (Flower's FedProx
                      strategy sends it as ``proximal-mu``, also understood)
``ditto-lambda``      Ditto: a personal model v trained ``personal-epochs`` with
                      lambda * (v - w_global) added to its gradient; v is what is evaluated
``finetune-epochs``   FedAvg + fine-tuning: evaluation fine-tunes a throw-away copy first
``optimizer``, ``lr``, ``momentum``, ``weight-decay``, ``batch-size``
``optimizer-state``   ``reset`` (fresh each round) or ``keep`` (kept in the device state)
``seed``, ``server-round``  make shuffling reproducible per device and round
``eval-before``/``eval-after``  evaluate the personalized model before/after training
====================  =====================================================================
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import rss
from .errors import ConfigError, DataError, MemoryCapExceeded
from .model import LayerSpec, Model
from .optimizers import Optimizer, create_optimizer

Arrays = dict[str, np.ndarray]
# what a device reports to the server (Flower reply MetricRecord); the fleet engine logs
# every METRIC_KEYS entry locally
REPLY_KEYS = ("num-examples", "train-loss", "loss-before", "accuracy-before", "loss-after",
              "accuracy-after", "peak-rss", "ram-cap", "cap-exceeded")
METRIC_KEYS = ("num-examples", "trained", "steps", "train-loss", "loss-before", "accuracy-before",
               "loss-after", "accuracy-after", "baseline-rss", "peak-rss", "ram-cap",
               "cap-exceeded", "needed-bytes", "micro-batch", "swap-bytes", "train-seconds")


@dataclass
class DeviceData:
    """A device's own data: class-id labels; the test split is from its own distribution."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class DeviceSettings:
    """What the device decides for itself (never sent by the server)."""

    ram_cap: int | None = None  # bytes for the whole process; None = uncapped
    swap: str = "auto"  # off | auto | on, used when the runtime supports RAM caps
    batch_size: int | None = None  # overrides the server's batch size (small-RAM devices)
    freeze: str = ""  # patterns of layers this device never trains (a frozen backbone)
    fallbacks: tuple[str, ...] = ()  # tried in order when the cap is too small:
    # "swap", "batch:N", "freeze:PATTERNS" (in node_config: separated by ";")


@dataclass
class DeviceState:
    """Everything the device keeps between rounds; ``arrays``/``meta`` are what is saved."""

    device_id: int
    data: DeviceData
    settings: DeviceSettings = field(default_factory=DeviceSettings)
    # "p/<key>" personal layers, "v/<key>" Ditto's personal model, "o/..." optimizer state
    arrays: Arrays = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- config
def _cfg(config: dict[str, Any], key: str, default: Any) -> Any:
    v = config.get(key, default)
    return default if v is None or v == "" else v


def patterns(text: str | None) -> list[str]:
    return [p.strip() for p in str(text or "").split(",") if p.strip()]


def matches(key: str, pats: list[str]) -> bool:
    """Does ``layer:param`` match any pattern (on the layer name or the whole key)?"""
    layer_name = key.split(":", 1)[0]
    return any(fnmatch.fnmatchcase(layer_name, p) or fnmatch.fnmatchcase(key, p) for p in pats)


def model_specs(model: str) -> tuple[list[LayerSpec] | None, str]:
    """``model`` config value -> (layer specs or None for a built-in/INI, canonical text)."""
    text = str(model).strip()
    if text.startswith("["):
        items = json.loads(text)
        return [LayerSpec(d["type"], d["name"],
                          {k: v for k, v in d.items() if k not in ("type", "name")})
                for d in items], text
    return None, text


def build_model(model: str, seed: int = 0) -> Model:
    """A fresh model from a ``model`` config value (see the module docstring)."""
    specs, text = model_specs(model)
    if specs is not None:
        return Model(specs, loss="cross_softmax", seed=seed, name="fleet")
    if text.startswith("{"):
        from .models import BUILTINS
        d = json.loads(text)
        name = d.pop("builtin")
        if name not in BUILTINS:
            raise ConfigError(f"unknown built-in model '{name}' (known: {', '.join(BUILTINS)})")
        return Model(BUILTINS[name](**d), loss="cross_softmax", seed=seed, name=name)
    from .cli import load_model
    return load_model(text, seed=seed)[0]


def split_keys(model: Model, config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(shared keys, personal keys) of ``model`` under the config's ``personal`` patterns."""
    pats = patterns(config.get("personal"))
    personal = [k for k in model.weights.keys() if matches(k, pats)]
    return [k for k in model.weights.keys() if k not in personal], personal


# ---------------------------------------------------------------------------- optimizer
class ProxOptimizer(Optimizer):
    """Adds ``mu * (w - anchor)`` to each gradient before the inner update: the proximal
    term of FedProx (Li et al., 2020) and of Ditto's personal model (Li et al., 2021)."""

    def __init__(self, inner: Optimizer) -> None:
        super().__init__(lr=inner.base_lr, schedule=inner.schedule)
        self.inner = inner
        self.name, self.slots = inner.name, inner.slots
        self.mu = 0.0
        self.anchor: Arrays = {}  # key -> flat float32 copy of the global weights
        self._scratch = np.zeros(0, np.float32)

    def init_state(self, params: list[tuple[str, int]]) -> None:
        self.inner.init_state(params)
        self._scratch = np.zeros(max((n for _, n in params), default=0), np.float32)

    @property
    def state_bytes(self) -> int:  # type: ignore[override]
        return self.inner.state_bytes + self._scratch.nbytes

    @property
    def state_buffer(self) -> np.ndarray:  # type: ignore[override]
        return self.inner.state_buffer

    @state_buffer.setter
    def state_buffer(self, value: np.ndarray) -> None:  # set by Optimizer.__init__ only
        pass

    def begin_step(self) -> None:
        self.inner.begin_step()

    def end_step(self) -> None:
        self.inner.end_step()

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        a = self.anchor.get(key) if self.mu else None
        if a is not None:  # g += mu * (w - anchor), in a preallocated scratch buffer
            n = g.size
            t = self._scratch[:n].reshape(g.shape)
            np.subtract(w.reshape(g.shape), a[start:start + n].reshape(g.shape), out=t)
            t *= np.float32(self.mu)
            np.add(g, t, out=g)
        self.inner.update(key, w, g, start)

    def reset(self) -> None:
        self.inner.state_buffer[...] = 0
        self.inner.iteration = 0

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.inner.load_state_dict(d)


# ---------------------------------------------------------------------------- trainers
def _supports_caps() -> bool:
    return "ram_cap" in inspect.signature(Model.compile).parameters


_TRAINERS: "OrderedDict[tuple[Any, ...], Model]" = OrderedDict()
_INIT: dict[tuple[str, int], Arrays] = {}
MAX_TRAINERS = 16  # compiled models kept per process (each holds a planned pool)
EVAL_BATCH = 32


def initial_weights(model: str, seed: int) -> Arrays:
    """The model's seeded initial weights (cached per process)."""
    key = (model, int(seed))
    if key not in _INIT:
        _INIT[key] = build_model(model, seed).get_weights()
    return _INIT[key]


def _frozen_specs(model: Model, frozen: list[str]) -> Model:
    """The same model with every layer matching ``frozen`` marked ``trainable=False``."""
    specs = [LayerSpec(s.type, s.name, dict(s.props)) for s in model.specs]
    for s in specs:
        if any(fnmatch.fnmatchcase(s.name, p) for p in frozen):
            s.props["trainable"] = False
    return Model(specs, loss=model.loss_name, seed=model.seed, name=model.name)


def trainer(config: dict[str, Any], batch: int, frozen: tuple[str, ...], settings: DeviceSettings,
            swap: str) -> Model:
    """A compiled model for this config, batch and frozen set, reused across devices.

    Raises :class:`MemoryCapExceeded` when the step cannot fit the device's RAM cap.
    """
    model_text = str(_cfg(config, "model", "mlp"))
    opt_name = str(_cfg(config, "optimizer", "sgd"))
    opt_kw: dict[str, Any] = {"lr": float(_cfg(config, "lr", 0.05))}
    if opt_name == "sgd":
        opt_kw["momentum"] = float(_cfg(config, "momentum", 0.0))
    if float(_cfg(config, "weight-decay", 0.0)):
        opt_kw["weight_decay"] = float(config["weight-decay"])
    key = (model_text, int(_cfg(config, "model-seed", 0)), batch, frozen, opt_name,
           tuple(sorted(opt_kw.items())), settings.ram_cap, swap)
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key]
    base = build_model(model_text, int(_cfg(config, "model-seed", 0)))
    m = _frozen_specs(base, list(frozen)) if frozen else base
    opt = ProxOptimizer(create_optimizer(opt_name, **opt_kw))
    if settings.ram_cap and _supports_caps():
        m.compile(batch_size=batch, optimizer=opt, ram_cap=settings.ram_cap, swap=swap)
    else:
        m.compile(batch_size=batch, optimizer=opt)
        if settings.ram_cap:  # runtime without caps: check the plan against the cap ourselves
            plan = m.plan()
            needed = rss.current_rss() + plan["planned_working_set_bytes"] + m.weights.nbytes
            if needed > settings.ram_cap:
                raise MemoryCapExceeded(needed, settings.ram_cap, "planned step does not fit")
    _TRAINERS[key] = m
    while len(_TRAINERS) > MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return m


def clear_cache() -> None:
    """Drop the compiled models (their pools) kept by :func:`trainer`."""
    _TRAINERS.clear()


def _inference_model(config: dict[str, Any]) -> Model:
    """An uncompiled model for evaluation only (no training pool, so it fits small caps)."""
    key = ("infer", str(_cfg(config, "model", "mlp")), int(_cfg(config, "model-seed", 0)))
    if key not in _TRAINERS:
        _TRAINERS[key] = build_model(key[1], key[2])
        while len(_TRAINERS) > MAX_TRAINERS:
            _TRAINERS.popitem(last=False)
    return _TRAINERS[key]


def _seed(config: dict[str, Any], device_id: int, phase: str) -> int:
    text = f"{_cfg(config, 'seed', 0)}/{device_id}/{_cfg(config, 'server-round', 0)}/{phase}"
    return zlib.crc32(text.encode())


def _evaluate(m: Model, weights: Arrays, data: DeviceData) -> tuple[float, float]:
    if data.y_test.shape[0] == 0:
        return -1.0, -1.0
    m.set_weights(weights, strict=False)
    # Two fixed batch sizes (EVAL_BATCH, then 1 for the tail) so that devices with different
    # test-set sizes reuse the same two inference executors instead of planning new ones.
    n = int(data.y_test.shape[0])
    cut = n - n % EVAL_BATCH
    loss = correct = 0.0
    for lo, hi, b in ((0, cut, EVAL_BATCH), (cut, n, 1)):
        if hi > lo:
            r = m.evaluate(data.x_test[lo:hi], data.y_test[lo:hi], batch_size=b)
            loss += r["loss"] * (hi - lo)
            correct += r.get("accuracy", -1.0) * (hi - lo)
    return loss / n, correct / n


def _layers_of(keys: list[str]) -> set[str]:
    return {k.split(":", 1)[0] for k in keys}


def _fit(m: Model, weights: Arrays, data: DeviceData, config: dict[str, Any], epochs: int,
         seed: int, anchor: Arrays | None = None, mu: float = 0.0,
         opt_state: dict[str, Any] | None = None) -> tuple[Arrays, list[float]]:
    """Train ``m`` from ``weights`` on the device's train split; returns new weights, losses."""
    m.set_weights(weights, strict=False)
    opt = m.optimizer
    assert isinstance(opt, ProxOptimizer)
    opt.reset()
    if opt_state:
        opt.load_state_dict(opt_state)
    opt.mu, opt.anchor = float(mu), {}
    if mu and anchor:
        opt.anchor = {k: np.ascontiguousarray(a, np.float32).reshape(-1) for k, a in anchor.items()}
    steps = int(_cfg(config, "local-steps", 0)) or None
    m.cap_exceeded = False  # the trainer is shared by devices: only this run's verdict counts
    hist = m.fit(data.x_train, data.y_train, epochs=epochs, steps=steps, shuffle=True, seed=seed)
    opt.mu, opt.anchor = 0.0, {}
    return m.get_weights(), hist.losses


def _train_with_fallbacks(state: DeviceState, config: dict[str, Any], batch: int,
                          frozen: tuple[str, ...]) -> tuple[Model, DeviceSettings, tuple[str, ...]]:
    """The device's trainer, trying its fallbacks (swap, smaller batch, frozen backbone)."""
    s = state.settings
    tries: list[tuple[int, tuple[str, ...], str]] = [(batch, frozen, s.swap)]
    for fb in s.fallbacks:
        b, fz, sw = tries[-1]
        if fb == "swap":
            tries.append((b, fz, "on"))
        elif fb.startswith("batch:"):
            tries.append((min(b, int(fb.split(":", 1)[1])), fz, sw))
        elif fb.startswith("freeze:"):
            tries.append((b, tuple(sorted(set(fz) | set(patterns(fb.split(":", 1)[1])))), sw))
        else:
            raise ConfigError(f"unknown fallback '{fb}' (use swap, batch:N or freeze:PATTERNS)")
    err: MemoryCapExceeded | None = None
    for b, fz, sw in tries:
        try:
            return trainer(config, b, fz, s, sw), s, fz
        except MemoryCapExceeded as e:
            err = e if err is None or e.needed < err.needed else err
    assert err is not None
    raise err


def run_device(state: DeviceState, shared: Arrays, config: dict[str, Any]
               ) -> tuple[Arrays, dict[str, float], DeviceState]:
    """One round on the device: train, return (shared weights out, metrics, new state).

    ``shared`` must hold exactly the non-personal parameters. When the device cannot train
    within its RAM cap the shared output is empty and ``metrics["trained"] == 0`` with
    ``cap-exceeded`` and ``needed-bytes`` set.
    """
    t0 = time.perf_counter()
    data, st = state.data, state.settings
    model_text, mseed = str(_cfg(config, "model", "mlp")), int(_cfg(config, "model-seed", 0))
    init = initial_weights(model_text, mseed)
    pats = patterns(config.get("personal"))
    personal_keys = [k for k in init if matches(k, pats)]
    shared_keys = [k for k in init if k not in personal_keys]
    if set(shared) != set(shared_keys):
        extra = sorted(set(shared) - set(shared_keys))
        missing = sorted(set(shared_keys) - set(shared))
        raise ConfigError(f"device {state.device_id}: shared weights do not match the model's "
                          f"shared part (unexpected: {extra[:3]}, missing: {missing[:3]}); "
                          f"personal patterns {pats}")
    metrics: dict[str, float] = {k: -1.0 for k in METRIC_KEYS}
    metrics.update({"num-examples": float(data.y_train.shape[0]), "trained": 0.0, "steps": 0.0,
                    "cap-exceeded": 0.0, "ram-cap": float(st.ram_cap or -1)})
    full = {**init, **{k: state.arrays.get("p/" + k, init[k]) for k in personal_keys}, **shared}
    ditto = float(_cfg(config, "ditto-lambda", 0.0))
    v_model = {k: state.arrays["v/" + k] for k in init if "v/" + k in state.arrays} if ditto else {}
    ev = _inference_model(config)
    if bool(_cfg(config, "eval-before", True)):
        metrics["loss-before"], metrics["accuracy-before"] = _evaluate(ev, v_model or full, data)

    n = int(data.y_train.shape[0])
    batch = min(int(st.batch_size or _cfg(config, "batch-size", 32)), n) if n else 0
    new_arrays = dict(state.arrays)
    rss.release_heap(collect=False)  # microseconds; a collection would cost milliseconds
    baseline = rss.current_rss()
    rss.reset_peak()
    metrics["baseline-rss"] = float(baseline)

    if batch < 1:
        metrics["peak-rss"] = float(rss.peak_rss())
        return {}, metrics, state
    frozen = tuple(sorted(patterns(st.freeze)))
    head_epochs = int(_cfg(config, "head-epochs", 0))
    epochs = int(_cfg(config, "local-epochs", 1))
    keep_opt = str(_cfg(config, "optimizer-state", "reset")) == "keep"
    opt_state = ({k[2:]: v for k, v in state.arrays.items() if k.startswith("o/")}
                 if keep_opt else None)
    if opt_state is not None and "o/iteration" in state.arrays:
        opt_state["iteration"] = int(state.arrays["o/iteration"])
    losses: list[float] = []
    m: Model | None = None
    try:
        if head_epochs and personal_keys and shared_keys:  # FedRep: head first, then body
            body = tuple(sorted(_layers_of(shared_keys) | set(frozen)))
            m, _, _ = _train_with_fallbacks(state, config, batch, body)
            full, ls = _fit(m, full, data, config, head_epochs,
                            _seed(config, state.device_id, "head"))
            losses += ls
            head = tuple(sorted(_layers_of(personal_keys) | set(frozen)))
            m, _, _ = _train_with_fallbacks(state, config, batch, head)
            full, ls = _fit(m, full, data, config, epochs, _seed(config, state.device_id, "body"))
            losses += ls
        else:
            m, _, _ = _train_with_fallbacks(state, config, batch, frozen)
            # Flower's FedProx strategy sends "proximal-mu"; our own config says "prox-mu"
            mu = float(_cfg(config, "prox-mu", 0.0)) or float(_cfg(config, "proximal-mu", 0.0))
            full, ls = _fit(m, full, data, config, epochs, _seed(config, state.device_id, "local"),
                            anchor=shared, mu=mu, opt_state=opt_state)
            losses += ls
            if keep_opt:
                assert isinstance(m.optimizer, ProxOptimizer)
                sd = m.optimizer.state_dict()
                new_arrays["o/iteration"] = np.asarray(sd.pop("iteration"), np.int64)
                new_arrays.update({"o/" + k: np.asarray(v) for k, v in sd.items()})
        if ditto:  # the personal model: lambda/2 ||v - w_global||^2 pulls it to the global one
            start = v_model or {**init, **shared}
            v_out, ls = _fit(m, start, data, config, int(_cfg(config, "personal-epochs", epochs)),
                             _seed(config, state.device_id, "ditto"), anchor={**init, **shared},
                             mu=ditto)
            v_model = v_out
            new_arrays.update({"v/" + k: a for k, a in v_out.items()})
    except MemoryCapExceeded as e:
        metrics.update({"cap-exceeded": 1.0, "needed-bytes": float(e.needed),
                        "peak-rss": float(rss.peak_rss())})
        return {}, metrics, state
    # the peak since training began: at least the baseline, even where RSS fell before the
    # RAM guard reset the OS high-water mark for the step (a compile gives heap back)
    peak = max(rss.peak_rss(), baseline)
    metrics.update({"peak-rss": float(peak), "steps": float(len(losses)), "trained": 1.0,
                    "train-loss": float(np.mean(losses)) if losses else -1.0})
    if m is not None and hasattr(m, "memory_report"):
        rep = m.memory_report()
        metrics["micro-batch"] = float(rep.get("micro_batch") or batch)
        metrics["swap-bytes"] = float(rep.get("swap_bytes_written") or 0)
        if rep.get("cap_exceeded"):
            metrics["cap-exceeded"] = 1.0
    if st.ram_cap and peak > st.ram_cap:  # the OS would have killed it: the update is lost
        metrics.update({"cap-exceeded": 1.0, "needed-bytes": float(peak), "trained": 0.0})
        return {}, metrics, state
    new_arrays.update({"p/" + k: full[k] for k in personal_keys})
    if bool(_cfg(config, "eval-after", True)):
        metrics["loss-after"], metrics["accuracy-after"] = _evaluate(ev, v_model or full, data)
    metrics["train-seconds"] = time.perf_counter() - t0
    meta = dict(state.meta)
    meta["rounds"] = meta.get("rounds", 0.0) + 1
    new_state = DeviceState(state.device_id, data, st, new_arrays, meta)
    return {k: full[k] for k in shared_keys}, metrics, new_state


def evaluate_device(state: DeviceState, shared: Arrays, config: dict[str, Any]) -> dict[str, float]:
    """The personalized model on the device's own test split: ``num-examples`` (test
    samples), ``loss``, ``accuracy``. FedAvg + fine-tuning trains a throw-away copy first.

    Raises :class:`MemoryCapExceeded` when the process is already larger than the cap."""
    data = state.data
    cap = state.settings.ram_cap
    if cap and rss.current_rss() > cap:
        raise MemoryCapExceeded(rss.current_rss(), cap, "the runtime alone is larger than the cap")
    init = initial_weights(str(_cfg(config, "model", "mlp")), int(_cfg(config, "model-seed", 0)))
    pats = patterns(config.get("personal"))
    personal = {k: state.arrays.get("p/" + k, a) for k, a in init.items() if matches(k, pats)}
    full = {**init, **personal, **shared}
    if float(_cfg(config, "ditto-lambda", 0.0)) and any(k.startswith("v/") for k in state.arrays):
        full = {k: state.arrays.get("v/" + k, a) for k, a in full.items()}
    ft = int(_cfg(config, "finetune-epochs", 0))
    n = int(data.y_train.shape[0])
    if ft and n:
        batch = min(int(state.settings.batch_size or _cfg(config, "batch-size", 32)), n)
        try:
            frozen = tuple(patterns(state.settings.freeze))
            m, _, _ = _train_with_fallbacks(state, config, batch, frozen)
            full, _ = _fit(m, full, data, config, ft, _seed(config, state.device_id, "finetune"))
        except MemoryCapExceeded:
            pass  # cannot fine-tune here: evaluate the model as received
    loss, acc = _evaluate(_inference_model(config), full, data)
    return {"num-examples": float(data.y_test.shape[0]), "loss": loss, "accuracy": acc}


# ---------------------------------------------------------------------------- state files
def save_state(state: DeviceState, path: str) -> None:
    """The persistent part of the state (arrays and meta) as one ``.npz``, atomically."""
    from .weights import save_npz_atomic
    arrays = dict(state.arrays)
    arrays.update({"meta/" + k: np.asarray(v) for k, v in state.meta.items()})
    save_npz_atomic(path, arrays)


def load_state(path: str) -> tuple[Arrays, dict[str, float]]:
    """(arrays, meta) saved by :func:`save_state`."""
    from .weights import load_npz
    raw = load_npz(path)
    meta = {k[5:]: float(v) for k, v in raw.items() if k.startswith("meta/")}
    return {k: v for k, v in raw.items() if not k.startswith("meta/")}, meta


def load_device_data(path: str) -> DeviceData:
    """A device's ``.npz``: ``x, y`` and optionally ``x_test, y_test`` (else 20% of x, y)."""
    from .weights import load_npz
    z = load_npz(path)
    if "x" not in z or "y" not in z:
        raise DataError(f"{path} needs arrays x and y (found: {', '.join(z) or 'none'})")
    x, y = z["x"], z["y"]
    if "x_test" in z and "y_test" in z:
        return DeviceData(x, y, z["x_test"], z["y_test"])
    cut = len(y) - max(1, len(y) // 5) if len(y) > 1 else len(y)
    return DeviceData(x[:cut], y[:cut], x[cut:], y[cut:])


def parse_settings(values: dict[str, Any]) -> DeviceSettings:
    """Device settings from a flat mapping (Flower ``node_config`` style keys)."""
    from .units import parse_size
    cap = values.get("ram-cap")
    return DeviceSettings(
        ram_cap=parse_size(str(cap)) if cap not in (None, "", 0, "0", "none") else None,
        swap=str(values.get("swap", "auto")),
        batch_size=int(values["batch-size"]) if values.get("batch-size") else None,
        freeze=str(values.get("freeze", "")),
        fallbacks=tuple(f.strip() for f in str(values.get("fallbacks", "")).split(";")
                        if f.strip()),
    )
