"""The board's ClientApp with a device service (device_runtime.service), on Flower's real
processes: a SuperLink and two SuperNodes on 127.0.0.1, one forwarding to a device service,
one training inside each message's ``flwr-clientapp`` process, side by side in one run.

Flower 1.41 starts a ClientApp process for every message: what each of those costs is
measured here, per SuperNode, and the service shows that it paid its imports, warm-up and
data loading once for the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("flwr")

from tests.flower_harness import (  # noqa: E402
    NEEDS_FLOWER,
    ROOT,
    ClientAppPeaks,
    device_files,
    flower_home,
    flwr_run,
    free_port,
    start_superlink,
    start_supernode,
)

pytestmark = NEEDS_FLOWER
ROUNDS = 3


def test_a_device_service_pays_its_imports_once_and_each_message_stays_thin(tmp_path):
    # Prepare: two devices' data; device 0 is served by a long-lived device service
    from device_runtime.service import request

    device_files(tmp_path, 2)
    sock = tmp_path / "run" / "device.sock"
    result = tmp_path / "deploy.npz"
    port = free_port()
    with flower_home(tmp_path, "deploy", port) as h:
        svc = subprocess.Popen(
            [sys.executable, "-m", "device_runtime.service", "--socket", str(sock),
             "--data-path", str(tmp_path / "device0.npz"), "--state-dir",
             str(tmp_path / "state"), "--ram-cap", "1GiB"],
            env=h["env"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, stdin=subprocess.DEVNULL)
        h["procs"].append(svc)
        assert svc.stdout is not None
        ready = svc.stdout.readline()  # the service's first line, or EOF if it failed
        assert ready.startswith("device service ready"), ready
        start_superlink(h, port)
        configs = {"service": f"device-socket='{sock}'",
                   "in-process": f"data-path='{tmp_path / 'device1.npz'}' ram-cap=1073741824"}
        roots = {}
        for i, (name, node_config) in enumerate(configs.items()):
            roots[start_supernode(h, port, node_config, f"supernode{i}.log").pid] = name
        # Execute: three rounds with both SuperNodes (min-nodes=2), sampled as they run
        with ClientAppPeaks(roots, {"device-service": svc.pid}) as peaks:
            flwr_run(h, "deploy", f"num-rounds={ROUNDS} min-nodes=2 result-path='{result}'",
                     [])
        status, _ = request(str(sock), {"op": "ping"})
        alive = svc.poll() is None
    # Assert: the run finished, and the one service process answered every message of
    # its node (train and evaluate of each round) after loading once
    history = json.loads(result.with_suffix(".json").read_text())
    assert sorted(history["train"]) == [str(r) for r in range(1, ROUNDS + 1)]
    assert alive and status["pid"] == svc.pid
    assert status["served"] >= 2 * ROUNDS, status
    thin, fat = peaks.by_owner("service"), peaks.by_owner("in-process")
    print(f"ClientApp peaks: forwarding {[r >> 20 for r in thin]} MiB, training in the "
          f"process {[r >> 20 for r in fat]} MiB; device service {peaks.peak} B")
    messages = 2 * ROUNDS  # a train and an evaluate message per round on each node
    assert len(thin) >= messages and len(fat) >= messages, (thin, fat)
    # each forwarding process imports neither the runtime nor numba: every one is lighter
    # than every process that trains itself (measured: ~187 vs ~259 MiB). Flower may also
    # start a ClientApp that finds no message and exits before it loads the app (seen in CI:
    # one ~122 MiB process on each node), so the heaviest `messages` of each are compared
    assert max(thin) < min(fat[-messages:]), (thin, fat)
    assert peaks.peak["device-service"] < 1 << 30
