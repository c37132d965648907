"""Per-parameter L2 regularisation from layer properties (NNTrainer's names).

``weight_regularizer = l2norm`` with ``weight_regularizer_constant = c`` (default 1.0)
adds ``c * w`` to the gradient of the layer's weights (not its biases), as NNTrainer's
L2 regulariser does; ``weight_decay = c`` and ``bias_decay = c`` add ``c * w`` to the
weights' or biases' gradients. The loss value reported does not include the penalty.

The optimizers know one global ``weight_decay``; until they take per-parameter
coefficients, :class:`RegularizedModel` wraps the compiled optimizer's ``update`` so the
term is added to each gradient (block) just before the update reads it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import ModelError
from .kernels.regularize import l2_add
from .layers.base import parse_float
from .model import Model
from .optimizers import Optimizer

_NORM_PARAMS = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


def param_decays(model: Model) -> dict[str, float]:
    """``{"layer:param": c}`` for every trainable parameter with an L2 term."""
    props = {s.name.lower(): {str(k).lower(): v for k, v in s.props.items()} for s in model.specs}
    out: dict[str, float] = {}
    for key, info in model.weights.params.items():
        if not info.trainable:
            continue
        lname, pname = key.rsplit(":", 1)
        p = props.get(lname.lower(), {})
        if pname in _NORM_PARAMS:
            continue
        if "bias" in pname:
            c = parse_float(lname, "bias_decay", p.get("bias_decay", 0.0))
        else:
            c = parse_float(lname, "weight_decay", p.get("weight_decay", 0.0))
            reg = str(p.get("weight_regularizer", "none")).strip().lower()
            if reg == "l2norm":
                c += parse_float(lname, "weight_regularizer_constant",
                                 p.get("weight_regularizer_constant", 1.0))
            elif reg not in ("none", ""):
                raise ModelError(f"layer '{lname}': weight_regularizer={reg!r} is not supported "
                                 "(l2norm, none)")
        if c < 0:
            raise ModelError(f"layer '{lname}': regularisation constant {c} must be >= 0")
        if c:
            out[key] = c
    return out


def install(optimizer: Optimizer, decays: dict[str, float]) -> None:
    """Make ``optimizer.update`` add ``c * w`` to the gradient of each listed parameter."""
    if not decays:
        return
    base: Callable[..., None] = type(optimizer).update.__get__(optimizer)

    def update(key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        c = decays.get(key)
        if c:
            l2_add(g, w, c)  # g is this step's gradient (block): nothing reads it after
        base(key, w, g, start)

    optimizer.update = update  # type: ignore[method-assign]


class RegularizedModel(Model):
    """A :class:`Model` whose layers' L2 properties take effect at ``compile``."""

    def compile(self, *args: Any, **kwargs: Any) -> "RegularizedModel":
        super().compile(*args, **kwargs)
        self.param_decay = param_decays(self)
        assert self.optimizer is not None
        install(self.optimizer, self.param_decay)
        return self
