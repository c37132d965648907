"""Command lines: ``nnfleet plan|train|simulate|bench`` run in-process on thousands of fuzzed
argument lists (bad numbers, sizes, names, paths to hostile files, unknown and repeated
options). Each either runs (intercepted before any real training or simulation) or exits
with code 2 (3: refused by the RAM cap) and one line ``nnfleet: error: ...`` on stderr,
never a traceback or a hang (issue 6, item 4).
"""

from __future__ import annotations

import contextlib
import io
import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_runtime import build
from device_runtime import weights as weights_mod
from device_runtime.model import Model
from experiments.cli import main
from tests.fuzzing import (
    TALLY,
    fuzz_report,  # noqa: F401 (an autouse fixture)
    fuzz_settings,
    time_bound,
)


class WouldRun(Exception):
    """The arguments were accepted: training or a simulation would start here."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths a fuzzed command line points at: good and hostile data, weights, models."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.normal(size=(32, 784)).astype(np.float32),
             y=rng.integers(0, 10, 32))
    np.savez(d / "nan.npz", x=np.full((32, 784), np.nan, np.float32), y=np.zeros(32, int))
    np.savez(d / "labels.npz", x=np.zeros((32, 784), np.float32), y=np.full(32, 10**12))
    np.savez(d / "strings.npz", x=np.zeros((32, 784), np.float32), y=np.array(["a"] * 32))
    np.savez(d / "y2d.npz", x=np.zeros((32, 784), np.float32), y=np.zeros((32, 3, 2)))
    np.savez(d / "shape.npz", x=np.zeros((32, 5), np.float32), y=np.zeros(32, int))
    np.savez(d / "weights.npz", **{"fc1:weight": np.zeros((3, 3), np.float32)})
    np.savez(d / "mlp_w.npz", **build("mlp").get_weights())
    (d / "random.npz").write_bytes(rng.bytes(300))
    (d / "tiny.ini").write_text("[Model]\nbatch_size = 4\n[in]\ntype = input\ninput_shape = 1:1:8\n"
                                "[fc]\ntype = fully_connected\nunit = 3\n")
    (d / "bad.ini").write_text("[in]\ntype = input\ninput_shape = 1:1:8\n[fc]\nunit = 3\n")
    (d / "bin.ini").write_bytes(b"\xff\xfe\x00[")
    (d / "cfg.toml").write_text('rounds = 0\n')
    (d / "ok.toml").write_text('rounds = 1\n[data]\ndevices = 2\n')
    (d / "bad.toml").write_text('rounds = [\n')
    (d / "dir").mkdir()
    return d


NUMBERS = ["0", "-1", "1", "3", "16", "1e3", "1.5", "nan", "inf", "-inf", "1e400", "0x10",
           "99999999999999999999", "-99999999999999999999", "", " ", "1_000", "٣"]
TEXT = ["", "x", "-", "--", "nope", "a\nb", "\x00", "\u00e9\u00e8", "64MiB", "1e400TiB", "-5MB",
        "0", "fc1", "*", "in,fc1", "swap;batch:4", "all", "x" * 300]
FILES = ["data.npz", "nan.npz", "labels.npz", "strings.npz", "y2d.npz", "shape.npz",
         "weights.npz", "random.npz", "tiny.ini", "bad.ini", "bin.ini", "cfg.toml", "ok.toml",
         "bad.toml", "dir", "missing.npz", "dir/missing/w.npz"]
OPTIONS = {
    "plan": {"--batch-size": NUMBERS, "--planner": ["best_fit", "nope", ""], "--json": None},
    "train": {"--data": FILES, "--samples": NUMBERS, "--epochs": NUMBERS, "--steps": NUMBERS,
              "--batch-size": NUMBERS, "--optimizer": ["sgd", "adam", "lion", ""],
              "--lr": NUMBERS, "--momentum": NUMBERS, "--no-shuffle": None, "--init": FILES,
              "--save": FILES, "--planner": ["best_fit", "naive", "x"], "--seed": NUMBERS,
              "--ram-cap": TEXT + NUMBERS, "--swap": ["off", "auto", "on", "maybe"],
              "--lookahead": NUMBERS, "--freeze": TEXT, "--kernels": ["auto", "numpy", "x"],
              "--json": None},
    "simulate": {"--devices": NUMBERS, "--rounds": NUMBERS,
                 "--algorithm": ["fedavg", "x", ""],  # "a\nb": see the xfail below
                 "--workers": NUMBERS, "--isolation": ["worker", "fork", "x"],
                 "--seed": NUMBERS, "--quiet": None, "--resume": None},
}
MODELS = ["mlp", "lenet5", "nope", "", "-x", "tiny.ini", "bad.ini", "bin.ini", "missing.ini",
          "dir", "data.npz"]
# values that are fine (and allocate little): most options get one, so that the bad one
# of a command line is reached
VALID = {"--batch-size": ["1", "3", "16"], "--samples": ["8", "32"], "--epochs": ["1", "2"],
         "--steps": ["1", "2"], "--optimizer": ["sgd", "adam", "adamw"], "--lr": ["0.1", "1e-3"],
         "--momentum": ["0", "0.9"], "--data": ["data.npz"], "--init": ["mlp_w.npz"],
         "--save": ["saved.npz"], "--planner": ["best_fit", "naive"], "--seed": ["0", "7"],
         "--ram-cap": ["1GiB", "2e9", "1MiB"], "--swap": ["off", "auto", "on"],
         "--lookahead": ["0", "3"], "--freeze": ["fc1"], "--kernels": ["auto"],
         "--devices": ["2", "4"], "--rounds": ["1"], "--algorithm": ["fedavg", "local"],
         "--workers": ["1"], "--isolation": ["worker"]}


@st.composite
def argv(draw, files_dir: str) -> list[str]:
    cmd = draw(st.sampled_from(["plan", "train", "train", "train", "simulate", "bench", "nope"]))
    args: list[str] = [cmd]

    def path(name: str) -> str:
        known = name in FILES or name in MODELS[5:] or name in ("mlp_w.npz", "saved.npz")
        return os.path.join(files_dir, name) if known else name

    good = st.sampled_from([True, True, True, False])
    if cmd in ("plan", "train"):
        model = draw(st.sampled_from(["mlp", "tiny.ini"] if draw(good) else MODELS))
        args.append(path(model))
    elif cmd == "simulate" and draw(st.booleans()):
        args.append(path(draw(st.sampled_from(["cfg.toml", "ok.toml", "bad.toml", "dir",
                                               "missing.toml", "bin.ini"]))))
    elif cmd == "bench":
        args.append(draw(st.sampled_from(["nope", "", "-x"])))
    opts = OPTIONS.get(cmd, OPTIONS["train"])
    for _ in range(draw(st.integers(0, 6))):
        flag = draw(st.sampled_from(sorted(opts) + ["--nope", "-x", "--batch", "--"]))
        values = opts.get(flag, TEXT)
        if values is None:
            args.append(flag)
            continue
        value = draw(st.sampled_from(VALID[flag] if flag in VALID and draw(good) else values))
        form = draw(st.sampled_from(["space", "space", "equals", "missing"]))
        args += [flag, path(value)] if form == "space" else [f"{flag}={path(value)}"] \
            if form == "equals" else [flag]
    if cmd == "simulate":
        args += ["--out", os.path.join(files_dir, "runs"), "--quiet"]
    if cmd == "train" and "--batch-size" not in args:
        args += ["--batch-size", "8", "--samples", "32"]
    return args


def run_cli(args: list[str]) -> tuple[int | str, str, str]:
    """(exit code or "runs", stdout, stderr) of ``nnfleet *args``, in this process."""
    out, err = io.StringIO(), io.StringIO()
    guard = 256 << 20  # a model whose weights exceed this is refused, as if the machine had it
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch.object(Model, "fit", side_effect=WouldRun), \
            mock.patch.object(Model, "warm_up", lambda self: None), \
            mock.patch("experiments.data.make_fleet_data", side_effect=WouldRun), \
            mock.patch.object(weights_mod, "memory_available", lambda: guard), time_bound(30):
        try:
            code: int | str = main(args)
        except WouldRun:
            code = "runs"
    return code, out.getvalue(), err.getvalue()


def _check(target: str, args: list[str]) -> tuple[int | str, str]:
    import time

    t0 = time.perf_counter()
    code, _, err = run_cli(args)
    lines = err.strip().splitlines()
    if code in ("runs", 0):
        TALLY.add(target, "loaded", time.perf_counter() - t0)
        return code, ""
    assert code in (2, 3), (args, code, err)
    assert len(lines) == 1 and lines[0].startswith("nnfleet: error: "), (args, err)
    TALLY.add(target, "rejected", time.perf_counter() - t0)
    return code, lines[0]


@fuzz_settings(1500)
@given(st.data())
def test_fuzz_command_lines(files, data):
    args = data.draw(argv(str(files)))
    _check("command lines", args)


@pytest.mark.parametrize("args, needle", [
    (["train", "mlp", "--batch-size", "-3"], "argument --batch-size: must be > 0, got '-3'"),
    (["train", "mlp", "--lr", "nan"], "argument --lr: must be > 0, got 'nan'"),
    (["train", "mlp", "--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    (["train", "mlp", "--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["train", "mlp", "--ram-cap", "1e400"], "argument --ram-cap: size '1e400' is too large"),
    (["train", "mlp", "--ram-cap", "12 potatoes"], "argument --ram-cap: bad size '12 potatoes'"),
    (["train", "mlp", "--momentum", "nan"], "momentum must be in [0, 1), got nan"),
    (["train", "mlp", "--lookahead", "-5"], "lookahead must be >= 0, got -5"),
    (["train", "mlp", "--nope\nx"], "unrecognized arguments: --nope\\nx"),
    (["plan", "a\nb"], "MODEL 'a\\nb' is neither a file nor a built-in model"),
    (["simulate", "--devices", "1"], "--devices must be >= 2, got 1"),
    (["train", "lenet5", "--batch-size", "99999999999999999999"],  # was a hang (O(batch))
     "argument --batch-size: must be <= 65536"),
    (["plan", "mlp", "--batch-size", "65537"], "argument --batch-size: must be <= 65536"),
    (["train", "mlp", "--samples", "99999999999999999999"],  # was a ValueError traceback
     "--samples 99999999999999999999: the generated data needs"),
])
def test_bad_values_name_the_option(args, needle):
    code, line = _check("command lines: cases", args)
    assert code == 2 and needle in line, line


def test_simulate_error_with_a_line_break_is_one_line():
    _check("command lines: cases", ["simulate", "--algorithm", "a\nb"])
