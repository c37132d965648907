"""Personalization algorithms as data: which layers stay on the device, what the device
does each round, and which Flower strategy aggregates the rest.

A new algorithm is one row below; one whose device does something new also needs a
local-update rule (``device_runtime.device.rules``: one decorated function).

Personal layers are given as patterns over layer names (see ``device_runtime.device``),
with three placeholders resolved against the model: ``{head}`` (the classifier: the
model's last layer with weights unless the experiment names it), ``{base}`` (every other
layer with weights) and ``{bn}`` (every batch-normalization layer). ``*`` keeps the whole
model on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from device_runtime.errors import ConfigError
from device_runtime.model import LayerSpec
from device_runtime.modelspec import spec_text


@dataclass(frozen=True)
class Algorithm:
    """One personalization algorithm."""

    name: str
    summary: str
    reference: str
    personal: str = ""  # patterns of personal layers (placeholders allowed)
    # device config keys it sets (device_runtime.device.DeviceConfig; "local-update" names
    # the device's rule, device_runtime.device.rules)
    client: dict[str, Any] = field(default_factory=dict)
    strategy: str = "fedavg"  # a flwr.serverapp.strategy class, by lower-case name
    strategy_args: dict[str, Any] = field(default_factory=dict)
    # the model the algorithm trains, from the experiment's (its layers, its head names) ->
    # (layers, the names that {head} then stands for); None: the experiment's model
    model: Callable[[list[LayerSpec], list[str]], tuple[list[LayerSpec], list[str]]] | None = None


def two_heads(specs: list[LayerSpec], head: list[str]) -> tuple[list[LayerSpec], list[str]]:
    """FedRoD's model from a one-head model: the head becomes the generic head (logits),
    a personal head ``<head>_p`` of the same shape reads the same features (zero at the
    start: the personalized model starts as the generic one), and ``<head>_sum``, their
    sum with the head's activation, is the output. ``{head}`` stands for ``<head>_p``."""
    layers = _weight_layers(specs)
    names = list(head) or [layers[-1].name]
    if len(names) != 1 or names[0] != specs[-1].name or specs[-1].type != "fully_connected":
        raise ConfigError(f"fedrod needs a model that ends in its one fully_connected head "
                          f"(head {names}, last layer {specs[-1].name} ({specs[-1].type}))")
    h = specs[-1]
    props = dict(h.props)
    act = props.pop("activation", None)
    src = props.get("input_layers") or specs[-2].name
    p = {k: v for k, v in props.items() if k not in ("weight_initializer", "bias_initializer")}
    p.update(input_layers=src, weight_initializer="zeros", bias_initializer="zeros")
    out = {"input_layers": f"{h.name},{h.name}_p", **({"activation": act} if act else {})}
    return ([*specs[:-1], LayerSpec(h.type, h.name, props),
             LayerSpec("fully_connected", h.name + "_p", p),
             LayerSpec("addition", h.name + "_sum", out)], [h.name + "_p"])


# the papers' plain gradient steps (APFL, pFedMe, Per-FedAvg, FedRoD): whatever [train] says
PLAIN_SGD = {"optimizer": "sgd", "momentum": 0.0}

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("local", "every device trains alone; nothing leaves it", "baseline",
              personal="*", client={"optimizer-state": "keep"}),
    Algorithm("fedavg", "one global model, averaged by example count",
              "McMahan et al., AISTATS 2017"),
    Algorithm("fedavg-ft", "FedAvg, then each device fine-tunes the global model before use",
              "Wang et al., arXiv:1910.10252 2019", client={"finetune-epochs": 1}),
    Algorithm("fedper", "shared base, personal classifier head",
              "Arivazhagan et al., arXiv:1912.00818 2019", personal="{head}"),
    Algorithm("fedrep", "personal head trained first with the base frozen, then the shared "
              "base with the head frozen", "Collins et al., ICML 2021", personal="{head}",
              client={"local-update": "fedrep", "head-epochs": 2}),
    Algorithm("lg-fedavg", "personal base (representation), shared head",
              "Liang et al., arXiv:2001.01523 2020", personal="{base}"),
    Algorithm("ditto", "global model by FedAvg plus a personal model pulled towards it by "
              "lambda/2 ||v - w||^2", "Li et al., ICML 2021",
              client={"local-update": "ditto", "ditto-lambda": 0.1, "personal-epochs": 1}),
    Algorithm("fedbn", "batch-normalization layers stay on the device",
              "Li et al., ICLR 2021", personal="{bn}"),
    Algorithm("fedprox", "FedAvg with a proximal term mu/2 ||w - w_global||^2 on the device",
              "Li et al., MLSys 2020", strategy="fedprox", strategy_args={"proximal_mu": 0.01}),
    # robust aggregation of one global model (set the number of attackers Krum assumes with
    # [algorithm.krum] strategy-args = {num_malicious_nodes = F})
    Algorithm("krum", "one global model; each round the update closest to its n - f - 2 "
              "nearest neighbours is taken", "Blanchard et al., NeurIPS 2017", strategy="krum"),
    Algorithm("fedtrimmedavg", "one global model; per coordinate, the mean of the updates "
              "without the largest and smallest 20%", "Yin et al., ICML 2018",
              strategy="fedtrimmedavg"),
    Algorithm("fedmedian", "one global model; per coordinate, the median of the updates",
              "Yin et al., ICML 2018", strategy="fedmedian"),
    Algorithm("apfl", "a personal model v mixed with the global one, alpha v + (1 - alpha) "
              "w, alpha adapted on the device each step", "Deng et al., arXiv:2003.13461 2020",
              client={"local-update": "apfl", "apfl-alpha": 0.25, **PLAIN_SGD}),
    Algorithm("pfedme", "a personal model solving the Moreau-envelope problem f(theta) + "
              "lambda/2 ||theta - w||^2 each step; the local model moves towards it",
              "Dinh et al., NeurIPS 2020",
              client={"local-update": "pfedme", "pfedme-lambda": 15.0, "pfedme-k": 5,
                      "pfedme-beta": 1.0, **PLAIN_SGD}),
    Algorithm("perfedavg", "MAML-style: a global model that is good after one local gradient "
              "step (Hessian-free meta gradient); that step personalizes it",
              "Fallah et al., NeurIPS 2020",
              client={"local-update": "perfedavg", "perfedavg-variant": "hf", **PLAIN_SGD}),
    Algorithm("fedbabu", "the head stays at its random init during federated training, the "
              "body alone is aggregated; each device fine-tunes the whole model at evaluation",
              "Oh et al., ICLR 2022", personal="{head}",
              client={"local-update": "fedbabu", "fixed-head": True, "finetune-epochs": 5}),
    Algorithm("fedrod", "a generic head trained with the balanced softmax and aggregated, plus "
              "a personal head; the prediction is the sum of both", "Chen & Chao, ICLR 2022",
              personal="{head}", client={"local-update": "fedrod", **PLAIN_SGD}, model=two_heads),
]}


def get_algorithm(name: str) -> Algorithm:
    key = name.strip().lower()
    if key not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    return ALGORITHMS[key]


def _weight_layers(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
    # layers that own parameters: everything but inputs, activations, pooling, merges...
    skip = {"input", "activation", "pooling2d", "flatten", "dropout", "addition", "concat",
            "reshape", "multiout", "split"}
    return [s for s in specs if s.type.lower() not in skip]


def resolve_personal(pattern: str, specs: Sequence[LayerSpec], head: Sequence[str] = ()) -> str:
    """Replace ``{head}``, ``{base}``, ``{bn}`` by layer names of this model."""
    layers = _weight_layers(specs)
    heads = list(head) or [layers[-1].name]
    unknown = [h for h in heads if h not in {s.name for s in specs}]
    if unknown:
        raise ConfigError(f"head layer '{unknown[0]}' is not a layer of the model "
                          f"({', '.join(s.name for s in layers)})")
    bn = [s.name for s in layers if "batch_norm" in s.type.lower()]
    base = [s.name for s in layers if s.name not in heads]
    names = {"{head}": heads, "{base}": base, "{bn}": bn}
    out: list[str] = []
    for p in (x.strip() for x in pattern.split(",")):
        if p in names:
            out += names[p]
        elif p:
            out.append(p)
    if "{bn}" in pattern and not bn:
        raise ConfigError("this algorithm keeps batch-normalization layers personal but the "
                          "model has none (use a model with batch_normalization layers)")
    return ",".join(out)


def device_config(algo: Algorithm, specs: Sequence[LayerSpec], head: Sequence[str] = (),
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The device config keys for ``algo`` (personal patterns resolved), then overrides."""
    cfg: dict[str, Any] = {}
    if algo.model is not None:
        new, head = algo.model(list(specs), list(head))
        specs = new
        cfg["model"] = spec_text([{"type": s.type, "name": s.name, **s.props} for s in new])
    cfg["personal"] = resolve_personal(algo.personal, specs, head)
    cfg.update(algo.client)
    cfg.update(overrides or {})
    return cfg
