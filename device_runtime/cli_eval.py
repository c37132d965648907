"""``nnfleet eval`` and ``nnfleet predict``: a trained model on a user's data.

``eval MODEL --weights W.npz --data D.npz`` prints the mean loss and, for class labels, the
accuracy (with ``--json``: also the confusion matrix, rows = true class, columns =
predicted). ``predict MODEL --weights W.npz --data D.npz --out P.npy`` writes the model's
outputs, one row per sample (``(N, classes)`` for a classifier: softmax probabilities when
the model folds a softmax into its loss), or with ``--class-ids`` the predicted class ids;
the file is written atomically. ``D.npz`` needs ``x`` (and ``y`` for ``eval``). A built-in
model trained with ``--input-shape``/``--classes`` is named with the same options here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from . import cli_models
from .cli_args import HelpFormatter
from .errors import DataError

EXAMPLES = {
    "eval": "examples:\n  nnfleet eval lenet5 --weights w.npz --data test.npz --json\n"
            "  nnfleet eval mlp --input-shape 64 --classes 10 --weights w.npz --data test.npz",
    "predict": "examples:\n  nnfleet predict lenet5 --weights w.npz --data new.npz --out p.npy\n"
               "  nnfleet predict lenet5 --input-shape 1:28:28 --classes 4 --weights w.npz "
               "--data new.npz --out ids.npy --class-ids",
}


def add_parsers(sub: Any, batch_type: Any) -> None:
    """The ``eval`` and ``predict`` sub-commands, on ``sub`` (argparse subparsers)."""
    for name, text in (("eval", "loss, accuracy and confusion matrix of trained weights"),
                       ("predict", "write a trained model's outputs for new data (.npy)")):
        p = sub.add_parser(name, help=text, description=text, epilog=EXAMPLES[name],
                           formatter_class=HelpFormatter)
        p.add_argument("model", help="INI file, built-in model name or JSON layer list")
        p.add_argument("--weights", required=True, help="trained weights .npz (from --save)")
        p.add_argument("--data", required=True,
                       help=".npz with x and y" if name == "eval" else ".npz with x")
        p.add_argument("--batch-size", type=batch_type, default=64,
                       help="samples per inference batch")
        cli_models.add_arguments(p)
        if name == "eval":
            p.add_argument("--json", action="store_true", help="one JSON line")
        else:
            p.add_argument("--out", required=True, help="where the outputs go (.npy)")
            p.add_argument("--class-ids", action="store_true",
                           help="write the predicted class ids instead of the outputs")


def _model_and_data(args: argparse.Namespace, need_y: bool) -> tuple[Any, np.ndarray, Any]:
    from .data import load_npz

    model, _ = cli_models.load(args)
    model.load_weights(args.weights)
    arrays = load_npz(args.data)
    if "x" not in arrays or (need_y and "y" not in arrays):
        want = "x and y" if need_y else "x"
        raise DataError(f"{args.data} needs arrays {want} (found: {', '.join(arrays) or 'none'})")
    return model, arrays["x"], arrays.get("y")


def _rows(out: np.ndarray) -> np.ndarray:
    """``(N, *shape)`` -> ``(N, k)`` when the shape is ``k`` behind singleton axes."""
    shape = [d for d in out.shape[1:] if d != 1] or [1]
    return out.reshape(out.shape[0], *shape) if len(shape) == 1 else out


def cmd_eval(args: argparse.Namespace) -> int:
    model, x, y = _model_and_data(args, need_y=True)
    model.compile(batch_size=min(args.batch_size, max(1, len(x))), optimizer="sgd", lr=0.01)
    res: dict[str, Any] = {"model": model.name, **model.evaluate(x, y, args.batch_size)}
    probs = _rows(model.predict(x, args.batch_size))
    labels = np.asarray(y).reshape(len(x), -1)
    if probs.ndim == 2 and probs.shape[1] > 1 and labels.shape[1] == 1:
        k = probs.shape[1]
        truth = labels[:, 0].astype(np.int64)
        pred = probs.argmax(axis=1)
        conf = np.zeros((k, k), dtype=np.int64)
        np.add.at(conf, (truth.clip(0, k - 1), pred), 1)
        res["confusion_matrix"] = conf.tolist()
    if args.json:
        print(json.dumps(res))
    else:
        acc = f", accuracy {res['accuracy']:.2%}" if "accuracy" in res else ""
        print(f"{int(res['examples'])} samples: loss {res['loss']:.4f}{acc}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .weights import atomic_write

    model, x, _ = _model_and_data(args, need_y=False)
    model.compile(batch_size=min(args.batch_size, max(1, len(x))), optimizer="sgd", lr=0.01)
    out = _rows(model.predict(x, args.batch_size))
    if args.class_ids:
        if out.ndim != 2 or out.shape[1] < 2:
            raise DataError(f"--class-ids: the model's outputs have shape {out.shape[1:]}, "
                            f"not one score per class")
        out = out.argmax(axis=1).astype(np.int64)
    atomic_write(args.out, lambda f: np.save(f, out, allow_pickle=False), ".npy")
    print(f"{len(out)} predictions of shape {out.shape[1:] or '()'} written to {args.out}")
    return 0
