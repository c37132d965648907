"""The device service (device_runtime.service) and its frames (device_runtime.wire), without
Flower: a real service process on a Unix socket computes what the device program computes
in this process, keeps its state across a restart, and refuses what it should."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from device_runtime import wire
from device_runtime.device import DeviceData, DeviceState, initial_weights, run_device
from device_runtime.service import request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "12"},
    {"type": "fully_connected", "name": "fc1", "unit": 8, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])
CFG = {"model": MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "personal": "fc2"}


# ------------------------------------------------------------------------------- frames
def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(60)
    b.settimeout(60)
    return a, b


@pytest.mark.parametrize("seed", range(4))
def test_frames_carry_arrays_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    dtypes = ["float32", "float64", "int64", "int32", "uint8", "bool", "float16"]
    arrays = {}
    for i in range(int(rng.integers(0, 6))):
        shape = tuple(int(d) for d in rng.integers(0, 5, int(rng.integers(0, 4))))
        dt = dtypes[int(rng.integers(len(dtypes)))]
        arrays[f"a{i}:w"] = (rng.normal(size=shape) * 10).astype(dt)
    a, b = _pair()
    with a, b:
        wire.send(a, {"op": "x", "n": 3, "nan": float("nan")}, arrays)
        header, got = wire.recv(b)
    assert header["op"] == "x" and header["n"] == 3 and np.isnan(header["nan"])
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert got[k].tobytes() == v.tobytes()


def test_frames_refuse_what_is_not_one():
    with pytest.raises(wire.WireError, match="does not travel"):
        wire.send(socket.socket(), {}, {"o": np.array([object()], dtype=object)})
    cases = {
        b"XXXX" + b"\0" * 12: "bad magic",
        wire._PREFIX.pack(wire.MAGIC, 9, 2) + b"{}": "version 9",
        wire._PREFIX.pack(wire.MAGIC, 1, wire.MAX_HEADER + 1): "over the",
        wire._PREFIX.pack(wire.MAGIC, 1, 5) + b"nope!": "not JSON",
    }
    head = json.dumps({"arrays": [["w", "float32", [4]]]}).encode()
    cases[wire._PREFIX.pack(wire.MAGIC, 1, len(head)) + head + b"\0" * 7] = "in the middle"
    bad = json.dumps({"arrays": [["w", "object", [4]]]}).encode()
    cases[wire._PREFIX.pack(wire.MAGIC, 1, len(bad)) + bad] = "bad array entry"
    huge = json.dumps({"arrays": [["w", "float64", [1 << 40]]]}).encode()
    cases[wire._PREFIX.pack(wire.MAGIC, 1, len(huge)) + huge] = "exceed"
    for raw, msg in cases.items():
        a, b = _pair()
        with a, b:
            a.sendall(raw)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(wire.WireError, match=msg):
                wire.recv(b)


# ------------------------------------------------------------------------------ service
def _data() -> DeviceData:
    rng = np.random.default_rng(0)
    protos = rng.normal(0, 2, (3, 12))
    y = rng.integers(0, 3, 48)
    x = (protos[y] + rng.normal(0, 1, (48, 12))).astype(np.float32)
    return DeviceData(x[:36], y[:36], x[36:], y[36:])


def _start(tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    d = _data()
    data = tmp_path / "device.npz"
    if not data.exists():
        np.savez(data, x=d.x_train, y=d.y_train, x_test=d.x_test, y_test=d.y_test)
    sock = str(tmp_path / "run" / "device.sock")
    p = subprocess.Popen([sys.executable, "-m", "device_runtime.service", "--socket", sock,
                          "--data-path", str(data), "--state-dir", str(tmp_path / "state"),
                          *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.stdout is not None
    line = p.stdout.readline()  # "ready", or EOF when it failed
    return p, line


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)


def test_the_service_computes_what_the_device_program_computes_across_a_restart(tmp_path):
    # Reference: three rounds of FedPer in this process
    init = initial_weights(MODEL, 0)
    shared = {k: v for k, v in init.items() if k.startswith("fc1")}
    state = DeviceState(0, _data())
    ref = []
    for rnd in (1, 2, 3):
        out, metrics, state = run_device(state, shared, dict(CFG, **{"server-round": rnd}))
        ref.append((out, metrics))
        shared = out
    # The service: two rounds, a restart (the state is on disk), the third round
    p, line = _start(tmp_path)
    assert line.startswith("device service ready"), line + p.stderr.read()
    shared = {k: v for k, v in init.items() if k.startswith("fc1")}
    got = []
    try:
        for rnd in (1, 2):
            reply, out = request(p.args[4], {"op": "train", "run": 7, "device": 0,
                                             "config": dict(CFG, **{"server-round": rnd})},
                                 shared)
            got.append((out, reply["metrics"]))
            shared = out
    finally:
        _stop(p)
    p, line = _start(tmp_path)
    try:
        reply, out = request(p.args[4], {"op": "train", "run": 7, "device": 0,
                                         "config": dict(CFG, **{"server-round": 3})}, shared)
        got.append((out, reply["metrics"]))
        ev, _ = request(p.args[4], {"op": "evaluate", "run": 7, "device": 0, "config": CFG},
                        out)
        status, _ = request(p.args[4], {"op": "ping"})
    finally:
        _stop(p)
    for (ro, rm), (go, gm) in zip(ref, got):
        assert sorted(go) == sorted(ro) == ["fc1:bias", "fc1:weight"]
        for k in ro:
            assert go[k].tobytes() == ro[k].tobytes(), k
        for k in ("train-loss", "loss-before", "accuracy-after", "num-examples", "steps"):
            assert gm[k] == rm[k], k
    # the personal head stayed in the service's state: evaluation uses it
    assert ev["ok"] and ev["metrics"]["accuracy"] == pytest.approx(ref[-1][1]["accuracy-after"])
    assert status["served"] == 2  # this service process: round 3 and the evaluation


def test_the_service_reports_a_cap_it_cannot_meet_and_refuses_bad_requests(tmp_path):
    p, line = _start(tmp_path, "--ram-cap", "8MiB")
    assert line.startswith("device service ready"), line
    init = initial_weights(MODEL, 0)
    try:
        reply, out = request(p.args[4], {"op": "train", "run": 1, "config": CFG},
                             {k: v for k, v in init.items() if k.startswith("fc1")})
        bad, _ = request(p.args[4], {"op": "train", "run": "x"})
        unknown, _ = request(p.args[4], {"op": "fly", "run": 1})
        # a second service on the same socket is refused with one line, exit 2
        q, qline = _start(tmp_path)
        q_out, q_err = q.communicate(timeout=60)
    finally:
        _stop(p)
    assert reply["ok"] is False and reply["error"] == "cap" and out == {}
    assert reply["needed"] > reply["cap"] == 8 << 20
    assert bad["error"] == "device" and "integer 'run'" in bad["message"]
    assert "unknown request 'fly'" in unknown["message"]
    assert q.returncode == 2 and qline == "" and q_err.count("\n") == 1
    assert "in use" in q_err


def test_the_shipped_systemd_unit_starts_the_service_with_valid_arguments():
    import shlex

    from device_runtime.device import parse_settings
    from device_runtime.service import SETTING_FLAGS, _parser

    with open(os.path.join(ROOT, "deploy", "nnfleet-device.service")) as f:
        text = f.read().replace("\\\n", " ")
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(start[len("ExecStart="):])
    assert argv[1:3] == ["-m", "device_runtime.service"]
    args = _parser().parse_args(argv[3:])
    settings = parse_settings({k: getattr(args, k.replace("-", "_")) for k in SETTING_FLAGS
                               if getattr(args, k.replace("-", "_")) is not None})
    assert settings.ram_cap == 160 << 20 and settings.fallbacks == ("batch:8", "swap")
    # the OS's limit stands above the runtime's own cap, so the runtime stops first
    max_line = next(line for line in text.splitlines() if line.startswith("MemoryMax="))
    assert int(max_line.split("=")[1].rstrip("M")) << 20 > settings.ram_cap
    assert args.socket.startswith("/run/nnfleet/")  # the unit's RuntimeDirectory
