"""Per-parameter L2 regularisation from layer properties (NNTrainer's names).

``weight_regularizer = l2norm`` with ``weight_regularizer_constant = c`` (default 1.0)
adds ``c * w`` to the gradient of the layer's weights (not its biases), as NNTrainer's
L2 regulariser does; ``weight_decay = c`` and ``bias_decay = c`` add ``c * w`` to the
weights' or biases' gradients. The loss value reported does not include the penalty.

``Model.compile`` hands these coefficients to the optimizer (``Optimizer.param_decay``),
which adds the term to each gradient (block) just before it updates the weights.
"""

from __future__ import annotations

from typing import Any

from .errors import ModelError
from .layers.base import parse_float

_NORM_PARAMS = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


def param_decays(model: Any) -> dict[str, float]:
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
