"""Local-update rules: what a device does with the received shared weights in one round.

Each rule is one small function over a :class:`LocalRun`, registered under its name with
``@local_update(name)``; the device config's ``local-update`` key names it. Algorithms that
differ only in which layers stay on the device (FedAvg, FedPer, LG-FedAvg, FedBN, local
training) all use ``plain``; FedAvg + fine-tuning is an evaluation option
(``finetune-epochs``, see :mod:`.evaluation`). A new rule is one decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .config import DeviceConfig
from .localrun import LocalRun, layers_of
from .prox import ProxOptimizer
from .registry import LOCAL_UPDATES, local_update, resolve

__all__ = ["LocalRun", "rule_of"]


@local_update("plain")
def plain(run: LocalRun) -> None:
    """Local SGD/Adam from the received weights (McMahan et al., 2017), with FedProx's
    proximal term mu/2 ||w - w_global||^2 when ``prox-mu`` is set (Li et al., 2020)."""
    keep = run.cfg.optimizer_state == "keep"
    saved = run.state.arrays
    opt_state: dict[str, Any] | None = None
    if keep:
        opt_state = {k[2:]: v for k, v in saved.items() if k.startswith("o/")}
        if "o/iteration" in saved:
            # a (1,) array after a round trip through Flower's ArrayRecord
            opt_state["iteration"] = int(np.asarray(saved["o/iteration"]).reshape(-1)[0])
    run.weights = run.train(run.frozen, run.weights, run.cfg.local_epochs, "local",
                            anchor=run.received, mu=run.cfg.prox_mu, opt_state=opt_state)
    if keep:
        assert run.model is not None and isinstance(run.model.optimizer, ProxOptimizer)
        sd = run.model.optimizer.state_dict()
        run.arrays["o/iteration"] = np.asarray(sd.pop("iteration"), np.int64)
        run.arrays.update({"o/" + k: np.asarray(v) for k, v in sd.items()})


@local_update("fedrep", auto=("head-epochs", lambda c: bool(c.head_epochs)))
def fedrep(run: LocalRun) -> None:
    """FedRep (Collins et al., 2021): the personal head first with the shared body frozen,
    then the body with the head frozen; plain training when either part is empty."""
    if not (run.personal_keys and run.shared_keys):
        plain(run)
        return
    body = tuple(sorted(layers_of(run.shared_keys) | set(run.frozen)))
    run.weights = run.train(body, run.weights, run.cfg.head_epochs, "head")
    head = tuple(sorted(layers_of(run.personal_keys) | set(run.frozen)))
    run.weights = run.train(head, run.weights, run.cfg.local_epochs, "body")


@local_update("ditto", auto=("ditto-lambda", lambda c: bool(c.ditto_lambda)))
def ditto(run: LocalRun) -> None:
    """Ditto (Li et al., 2021): plain training of the global model, then a personal model
    v trained with lambda/2 ||v - w_global||^2 pulling it to the received global one."""
    plain(run)
    glob = {**run.init, **run.received}
    run.personal_model = run.train(run.frozen, run.personal_model or glob,
                                   run.cfg.epochs_of_personal_model(), "ditto", anchor=glob,
                                   mu=run.cfg.ditto_lambda)
    run.arrays.update({"v/" + k: a for k, a in run.personal_model.items()})


def rule_of(cfg: DeviceConfig) -> Callable[[LocalRun], None]:
    """The rule ``local-update`` names; ``auto`` picks the one whose keys the config sets
    (``head-epochs`` -> fedrep, ``ditto-lambda`` -> ditto, ``apfl-alpha`` -> apfl, a
    ``pfedme-*`` key -> pfedme, a ``perfedavg-*`` key -> perfedavg, ``fixed-head`` ->
    fedbabu, a model ending in a generic + personal head sum -> fedrod; else plain; two
    is ambiguous and refused): :func:`.registry.resolve`."""
    return LOCAL_UPDATES[resolve(cfg)]


# more rules, each registered as it is imported: APFL, pFedMe, Per-FedAvg, FedBABU, FedRoD
from . import rules_more, rules_rod  # noqa: E402,F401
