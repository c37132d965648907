"""What each experiment config key does, in words, for the generated reference
(experiments/config_doc.py -> docs/config-keys.md). The key lists, value checks and most
defaults come from the schema the loader checks against (experiments/config.py); a key of
the schema without a line here, or a line here for no key, fails tests/test_config_keys.py.
"""

from __future__ import annotations

# "<section> <key>": (default shown when the schema has none, what it does)
TEXT: dict[str, tuple[str, str]] = {
    # top level
    "top name": ("the file's name", "names the run; output goes to `runs/<name>/`"),
    "top seed": ("0", "the experiment's seed (the default of the four below: data, model "
                 "init, device sampling, batch order)"),
    "top seeds": ("one run", "one run per seed (e.g. [0, 1, 2]): mean, 95% CI and a paired "
                  "t-test against FedAvg over them"),
    "top data-seed": ("seed", "the fleet: data, partition, train/test cut, device profiles"),
    "top model-seed": ("seed", "the initial weights"),
    "top sampling-seed": ("seed", "devices picked each round, availability, dropouts, faults"),
    "top shuffle-seed": ("seed", "each device's batch order"),
    "top save-personal-models": ("true", "save each device's personalized model in "
                                 "`weights/<algorithm>/<device id>.npz`"),
    "top rounds": ("10", "federated rounds per algorithm"),
    "top algorithms": ('["local", "fedavg", "fedper"]',
                       "the algorithms compared on the same fleet (experiments/algorithms)"),
    # [data] common
    "data kind": ("synthetic_images", "where the fleet's data comes from (the kinds below)"),
    "data devices": ("100; every file or user for own data; 13 for digits",
                     "devices in the fleet (for own data with partition natural: a seeded "
                     "subset of the files or users)"),
    "data partition": ("the kind's first", "how samples are dealt to devices (partitions below)"),
    "data test-fraction": ("0.2", "each device's local test split, for devices without their "
                                  "own test set"),
    "data stratify": ("true", "the test split keeps each device's label mix"),
    # [model]
    "model layers": ("", "a layer list, one table per layer in NNTrainer's INI spellings "
                         "(`type`, `name`, `input_shape`, `unit`, `activation`, ...)"),
    "model builtin": ("", "a built-in model instead of `layers`"),
    "model args": ("", "arguments of the built-in model (e.g. `{classes = 10}`)"),
    "model name": ("", "a built-in name or an INI file path, instead of `layers`"),
    "model head": ("", "the personal layers of FedPer, FedRep and LG-FedAvg"),
    # [train] / [algorithm.<name>] (device config keys, device_runtime/device/config.py)
    "train local-update": ("", "the local-update rule; auto picks it from the keys set"),
    "train local-epochs": ("", "epochs on the device's train split each round"),
    "train local-steps": ("", "> 0: this many steps instead of local-epochs"),
    "train head-epochs": ("", "FedRep: epochs on the personal head with the body frozen"),
    "train apfl-alpha": ("0.25", "APFL: the initial weight alpha of the personal model in the "
                         "mix (then adapted each step)"),
    "train pfedme-lambda": ("15.0", "pFedMe: lambda of the Moreau envelope"),
    "train pfedme-k": ("5", "pFedMe: inner steps on the personal model per batch"),
    "train pfedme-lr": ("0 (= lr)", "pFedMe: the inner steps' learning rate"),
    "train pfedme-beta": ("1.0", "pFedMe: the server's beta, applied on the device"),
    "train perfedavg-beta": ("0 (= lr)", "Per-FedAvg: the meta step beta (lr is the "
                             "adaptation step alpha)"),
    "train perfedavg-variant": ('"hf"', "Per-FedAvg: hf (Hessian-free) or fo (first-order)"),
    "train perfedavg-delta": ("0.001", "Per-FedAvg HF: the finite-difference step of the "
                              "Hessian-vector product"),
    "train fixed-head": ("false", "FedBABU: the personal head stays at its initialization; "
                         "local-update auto then picks fedbabu"),
    "train prox-mu": ("", "FedProx: mu of the proximal term (Flower sends proximal-mu)"),
    "train ditto-lambda": ("", "Ditto: pull of the personal model towards the global one"),
    "train personal-epochs": ("local-epochs", "Ditto: epochs of the personal model"),
    "train finetune-epochs": ("", "evaluation fine-tunes a throw-away copy this many epochs"),
    "train optimizer": ("", "the device's optimizer"),
    "train lr": ("", "learning rate"),
    "train momentum": ("", "SGD momentum"),
    "train weight-decay": ("", "L2 weight decay (decoupled for adamw)"),
    "train batch-size": ("", "samples per step (a small device's own batch size wins)"),
    "train drop-last": ("", "drop each epoch's last partial batch; false (as PyTorch's "
                            "DataLoader): train on it too, inside the full batch's memory plan"),
    "train optimizer-state": ("", "keep: optimizer state carried across rounds"),
    "train eval-before": ("", "evaluate the personalized model before training"),
    "train eval-after": ("", "... and after"),
    "algorithm strategy-args": ("{}", "keyword arguments of the Flower strategy, in Flower's "
                                      "own spellings (e.g. `{num_malicious_nodes = 8}`)"),
    # [server]
    "server strategy": ("fedavg", "Flower strategy for FedAvg-based algorithms (fedavg, "
                                  "fedadam, fedyogi, fedavgm, krum, ...)"),
    "server strategy-args": ("{}", "keyword arguments of that strategy (Flower's spellings)"),
    "server fraction-train": ("1.0", "fraction of devices trained each round"),
    "server fraction-evaluate": ("1.0", "fraction of devices evaluated each round"),
    "server min-nodes": ("2", "the strategy's minimum of devices"),
    "server timeout": ("3600", "seconds a round may take"),
    "server screen-updates": ("true", "reject absurd updates before aggregation"),
    "server max-update-norm": ("10.0", "reject an update whose norm exceeds this x the "
                                       "global weights'"),
    "server max-norm-over-median": ("0 (off)", "reject an update whose norm exceeds this x "
                                               "the round's median"),
    "server max-num-examples": ("the largest train split", "the largest num-examples a "
                                                           "device may claim"),
    # [fleet]
    "fleet isolation": ("worker", "worker: warm worker processes; fork: a fresh child per "
                                  "device, killed if it goes over its cap"),
    "fleet workers": ("0 (one per core)", "worker processes"),
    "fleet ram-cap": ("uncapped", "each device's RAM cap for its whole process: a size or a "
                                  "distribution"),
    "fleet speed": ("1.0", "relative compute speed (a number or a distribution)"),
    "fleet availability": ("1.0", "probability a device is online in a round"),
    "fleet dropout": ("0.0", "probability a device drops out mid-round"),
    "fleet small-below": ("", "devices with a cap below this use the small-device settings"),
    "fleet small-batch-size": ("", "batch size of small devices"),
    "fleet small-freeze": ("", "layer patterns small devices never train"),
    "fleet swap": ("auto", "swap tensors to storage when the plan does not fit the cap"),
    "fleet kernels": ("auto", "auto: numba's kernels for caps >= numba-min-cap, numpy's below"),
    "fleet numba-min-cap": ("224MiB", "the smallest cap that gets numba's kernels"),
    "fleet cgroups": ("auto", "auto: each device process in a memory cgroup limited at its "
                      "cap where one can be made (else the runtime's guard alone); off; require"),
    "fleet backend": ("local", "local: this machine's fleet engine; ray: a Ray cluster"),
    "fleet ray-address": ("a local Ray", "the Ray cluster to join (with backend = ray)"),
    "fleet fallbacks": ("", "what a device tries when its cap is too small for the step"),
    # [faults] (experiments/fleet/faults.py checks them)
    "faults rate": ("0.0", "probability that a device's train task of a round gets a fault"),
    "faults kinds": ("every kind", "the kinds the rate draws from, or a table of weights"),
    "faults seed": ("the experiment's", "seed of the fault draws"),
    "faults timeout": ("none", "seconds a device task may run before it is killed"),
    "faults min-replies": ("0", "a round with fewer successful replies is not aggregated"),
    "faults scale": ("100.0", "the factor of a `scale` fault's update"),
    "faults dtype": ("float64", "the dtype of a `dtype` fault's first array"),
    "faults at": ("", "explicit faults: `kind = {devices = [...], rounds = [...]}`"),
}

# what each [data] kind and partition is (their keys and defaults come from the registry)
KIND_TEXT = {
    "synthetic_fedprox": "FedProx's Synthetic(alpha, beta) (Li et al., MLSys 2020), generated",
    "synthetic_images": "class-prototype images with per-device feature shift, generated",
    "leaf": "LEAF JSON from your files: FEMNIST, Shakespeare, Sent140, or `features` (any "
            "feature vector in LEAF's layout); one device per user",
    "npz_dir": "a folder of `<device id>.npz` files of your own (`x`, `y`, optional "
               "`x_test`, `y_test`); one device per file",
    "digits": "scikit-learn's 1,797 8x8 handwritten digits, shipped in the package (the "
              "`data` extra); natural = 13 contiguous blocks of file order (not writers: "
              "no writer ids are shipped)",
    "sklearn": "scikit-learn's shipped tables (the `data` extra), standardized; natural = "
               "contiguous blocks of file order (sorted by class)",
}
PARTITION_TEXT = {
    "natural": "as the data comes: one device per generated device, file or user; file-order "
               "blocks for scikit-learn's data",
    "skew": "the generator's own label skew (`label-skew`)",
    "iid": "shuffled and cut into near-equal parts",
    "dirichlet": "per-class Dirichlet(alpha) shares; small alpha = strong label skew",
    "k_classes": "each device holds exactly k classes",
}
