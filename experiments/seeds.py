"""Seeds of a simulate run: what each one drives, and repeating a run over several.

Four seeds, each ``seed`` unless the config sets it (top-level keys, beside ``seed``):

- ``data-seed``: the fleet: the data each device gets (generation, partition, train/test
  cut) and the devices' profiles (RAM cap, speed, availability, dropout).
- ``model-seed``: the model's initial weights (the server's and every device's).
- ``sampling-seed``: what is drawn while the run goes: which devices the server picks each
  round (Flower samples nodes with Python's ``random``), who is offline or drops out,
  injected faults.
- ``shuffle-seed``: each device's batch order (and the batch of Per-FedAvg's adaptation
  step); the server forwards it to the devices as ``shuffle-seed``. A config that sets
  none of the sub-seeds gives the batch order it gave when one seed drove sampling and
  shuffling (both are ``seed``); one that sets ``sampling-seed`` alone now keeps its batch
  order at ``seed``.

Changing one leaves what the others drive unchanged (tests/test_seeds_roles.py).

``seeds = [0, 1, 2]`` (or ``nnfleet simulate --seeds 0,1,2``) runs the whole experiment
once per seed, each with ``seed`` set to it, so a sub-seed the config sets stays fixed
over the repeats (``data-seed = 0`` with ``seeds = [0, 1, 2]``: the same fleet, three
model inits and samplings). Each seed's run is a complete run of its own in
``<out>/seed-<s>/`` (records, checkpoint, summary, weights: resumable on its own); the
figures over seeds in ``<out>/summary.json`` and ``report.md`` are recomputed from the
seeds' ``summary.json`` files (experiments/report/over_seeds.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from device_runtime.errors import ConfigError

ROLES = ("data", "model", "sampling", "shuffle")
MAX_SEED = 2**32 - 1


def seed_roles(cfg: dict[str, Any]) -> dict[str, int]:
    """``{"data": .., "model": .., "sampling": .., "shuffle": ..}``: each ``<role>-seed``
    or ``seed``."""
    base = int(cfg.get("seed", 0))
    return {role: int(cfg.get(f"{role}-seed", base)) for role in ROLES}


def check_seeds(where: str, v: Any) -> None:
    """The ``seeds`` key: a non-empty list of distinct integers in [0, 2^32 - 1]."""
    ok = isinstance(v, list) and v and all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in v)
    if not ok:
        raise ConfigError(f"{where or 'seeds'} = {v!r:.40} must be a non-empty list of "
                          f"integers from 0 to {MAX_SEED}")
    dup = next((s for s in v if v.count(s) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where or 'seeds'} lists seed {dup} twice")


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2] (a one-line ConfigError on anything else)."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r:.40}: give comma-separated integers, e.g. "
                          f"--seeds 0,1,2") from None
    check_seeds("--seeds", seeds)
    return seeds


def seed_list(cfg: dict[str, Any], cli_seeds: str | None, cli_seed: int | None) -> list[int] | None:
    """The seeds to repeat the run over, or None for one run in the plain layout.

    ``--seed N`` is one run with seed N (the config's ``seeds`` set aside); ``--seeds``
    replaces the config's ``seeds``."""
    if cli_seeds is not None and cli_seed is not None:
        raise ConfigError("give --seed N (one run) or --seeds A,B,... (one run per seed), "
                          "not both")
    if cli_seed is not None:
        return None
    if cli_seeds is not None:
        return parse_seeds(cli_seeds)
    if "seeds" in cfg:
        return [int(s) for s in cfg["seeds"]]
    return None


def for_seed(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one seed's run: ``seed`` set, ``seeds`` gone (so that listing one more
    seed leaves the fingerprints, and so the resumability, of the others as they were)."""
    out = {k: v for k, v in cfg.items() if k != "seeds"}
    out["seed"] = int(seed)
    return out


def seed_dir(out: str, seed: int) -> str:
    """Where the run of ``seed`` lives inside a multi-seed run's folder."""
    return os.path.join(out, f"seed-{seed}")


def finished_summary(folder: str, fingerprint: str) -> dict[str, Any] | None:
    """The run's ``summary.json`` in ``folder`` when it is complete and was made by the run
    with ``fingerprint`` (None: run or resume it)."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if summary.get("config", {}).get("fingerprint") == fingerprint else None


def has_checkpoint(folder: str) -> bool:
    """Whether ``folder`` holds a checkpoint that ``--resume`` can go on from."""
    from experiments.resume import PREFIX

    ckpt = os.path.join(folder, "checkpoint")
    return os.path.isdir(ckpt) and any(d.startswith(PREFIX) for d in os.listdir(ckpt))
