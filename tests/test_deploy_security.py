"""A Flower deployment with TLS and SuperNode authentication, for real, on 127.0.0.1.

The README's deployment commands, in order: ``python -m server.keys`` makes a throw-away
CA, the SuperLink's certificate and SuperNode key pairs; ``flower-superlink`` starts with
TLS and ``--enable-supernode-auth``; ``flwr supernode register`` registers one device's
public key; that device's ``flower-supernode`` connects over TLS with its private key and
``flwr run`` trains one round on it. Meanwhile four nodes that should not get in try:
one with an unregistered key, one with no key, one that trusts another CA and one that
speaks plain HTTP. Each is refused, the SuperLink lists only the registered node, and the
round runs on that node alone. The ``flwr`` CLI is refused too without the right CA.

Every process is started in its own session with a tag in its environment; when the test
ends, pass or fail, each one and everything it started (found as descendants and by the
tag) is killed. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("cryptography")
psutil = pytest.importorskip("psutil")

# the Flower test harness, and its mark: skipped without flower-superlink
from tests.flower_harness import (  # noqa: E402 (after the skips above)
    NEEDS_FLOWER,
    app_config,
    exe,
    free_port,
    wait_port,
)

pytestmark = NEEDS_FLOWER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "NNFLEET_DEPLOY_TEST"  # environment tag of every process this test starts
REFUSED_WITHIN = 30  # seconds for a refused SuperNode to give up and exit
RUN_TIMEOUT = 180  # seconds for `flwr run`


@contextmanager
def _processes(home) -> Iterator[dict]:
    """Start processes with ``h["start"](args, log)``; all are killed on exit."""
    tag = uuid.uuid4().hex
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=ROOT, **{TAG: tag})
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(home / log, "w") as out:
            p = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    try:
        yield {"env": env, "start": start, "run": run}
    finally:
        doomed: dict[int, psutil.Process] = {}
        for p in procs:
            try:
                root = psutil.Process(p.pid)
                doomed.update({q.pid: q for q in [root, *root.children(recursive=True)]})
            except psutil.Error:
                pass
        for q in psutil.process_iter():  # reparented ones (SuperExec starts detached)
            try:
                if q.environ().get(TAG) == tag:
                    doomed[q.pid] = q
            except psutil.Error:
                pass
        for q in doomed.values():
            try:
                q.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(doomed.values()), timeout=10)
        for p in procs:
            p.wait(timeout=10)


def _json(stdout: str) -> dict:
    """The JSON object ``flwr ... --format json`` prints (after any status lines)."""
    return json.loads(stdout[stdout.index("{"):])


def _log(home, name: str) -> str:
    return (home / name).read_text(errors="replace")


def test_tls_and_supernode_auth_admit_only_the_registered_node(tmp_path):
    t0 = time.monotonic()
    # Prepare: certificates and keys exactly as the README makes them
    home = tmp_path / "flwr-home"
    home.mkdir()
    certs, evil = tmp_path / "certs", tmp_path / "other-ca"
    # the aggregation host's certificates by server.keys; node keys on the device, by the
    # device runtime (no server/ there)
    keys = [["server.keys", "tls", str(certs), "--host", "127.0.0.1"],
            ["server.keys", "tls", str(evil), "--host", "127.0.0.1"],
            ["device_runtime.keys", "node", str(tmp_path / "device")],
            ["device_runtime.keys", "node", str(tmp_path / "rogue")]]
    for args in keys:
        r = subprocess.run([sys.executable, "-m", *args], check=False,
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    for private in (certs / "ca.key", certs / "server.key", tmp_path / "device"):
        assert os.stat(private).st_mode & 0o777 == 0o600, private
    from experiments.fleet.flower_data import partition
    from server import initial_shared

    cfg = app_config()
    data = tmp_path / "device0.npz"
    partition(0, cfg).save(str(data))
    result = tmp_path / "final.npz"
    port = free_port()
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "production"\n\n'
        f'[superlink.production]\naddress = "{address}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n\n'
        f'[superlink.other-ca]\naddress = "{address}"\n'
        f'root-certificates = "{evil / "ca.crt"}"\n\n'
        f'[superlink.plain]\naddress = "{address}"\ninsecure = true\n')
    flwr = exe("flwr")

    with _processes(home) as h:
        # Execute: the SuperLink with TLS and SuperNode authentication...
        sl = h["start"]([exe("flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
                         "--ssl-certfile", str(certs / "server.pem"),
                         "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth",
                         "--disable-runtime-dependency-installation",
                         "--host", "127.0.0.1", "--port", str(port)], "superlink.log")
        wait_port(port, sl)
        # ...one registered device key...
        r = h["run"]([flwr, "supernode", "register", str(tmp_path / "device.pub"), "production",
                      "--format", "json"], 60)
        assert r.returncode == 0, r.stdout + r.stderr
        node_id = _json(r.stdout)["node-id"]

        def supernode(name: str, *tls: str) -> subprocess.Popen:
            return h["start"]([exe("flower-supernode"), "--superlink", address, *tls,
                               "--host", "127.0.0.1", "--port", str(free_port()),
                               "--max-wait-time", "60" if name == "good" else "5",
                               "--node-config", f"data-path='{data}'"], f"{name}.log")

        ca = ["--root-certificates", str(certs / "ca.crt")]
        good = supernode("good", *ca, "--auth-supernode-private-key", str(tmp_path / "device"))
        bad = {
            "rogue": supernode("rogue", *ca, "--auth-supernode-private-key",
                               str(tmp_path / "rogue")),
            "nokey": supernode("nokey", *ca),
            "other-ca": supernode("other-ca", "--root-certificates", str(evil / "ca.crt"),
                                  "--auth-supernode-private-key", str(tmp_path / "device")),
            "plain": supernode("plain", "--insecure"),
        }
        codes, gone = {}, {}
        t_bad = time.monotonic()
        while len(codes) < len(bad) and time.monotonic() < t_bad + REFUSED_WITHIN:
            for name, p in bad.items():
                if name not in codes and p.poll() is not None:
                    codes[name], gone[name] = p.returncode, time.monotonic() - t_bad
            time.sleep(0.1)
        assert len(codes) == len(bad), f"still running after {REFUSED_WITHIN}s: " \
            f"{sorted(set(bad) - set(codes))}"
        # ...the CLI without the SuperLink's CA, or without TLS...
        cli = {c: h["run"]([flwr, "supernode", "list", c], 60) for c in ("other-ca", "plain")}
        # ...what the SuperLink has admitted, and one round on it
        deadline = time.monotonic() + 60
        while True:
            r = h["run"]([flwr, "supernode", "list", "production", "--format", "json"], 60)
            assert r.returncode == 0, r.stdout + r.stderr
            nodes = _json(r.stdout)["nodes"]
            if any(n["status"] == "online" for n in nodes) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        t_run = time.monotonic()
        run = h["run"]([flwr, "run", ROOT, "production", "--stream", "-c",
                        f"num-rounds=1 min-nodes=1 result-path='{result}'"], RUN_TIMEOUT)
        t_run = time.monotonic() - t_run
        assert good.poll() is None, _log(home, "good.log")[-3000:]
        logs = {name: _log(home, f"{name}.log") for name in [*bad, "good", "superlink"]}
    print("\nrefused nodes exited after " + ", ".join(f"{k} {v:.1f}s" for k, v in gone.items())
          + f"; round {t_run:.1f}s; whole test {time.monotonic() - t0:.1f}s")

    # Assert: the round ran on the registered node alone and wrote its result
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "Received 1 results and 0 failures" in out, out[-3000:]
    assert f"SuperNode ID: {node_id}" in logs["good"]
    final = dict(np.load(result))
    initial = initial_shared(cfg)
    assert set(final) == set(initial)
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert any(not np.array_equal(final[k], initial[k]) for k in final)  # it trained
    assert os.stat(result).st_mode & 0o777 == 0o600  # written by atomic_write
    history = json.loads(result.with_suffix(".json").read_text())
    assert sorted(history["train"]) == ["1"]
    # the SuperLink knows one node, the registered one, and it is online
    assert [(n["node-id"], n["status"]) for n in nodes] == [(str(node_id), "online")]
    # every other node was refused and gave up by itself
    assert all(code != 0 for code in codes.values()), codes
    assert "Failed to activate SuperNode" in logs["rogue"]  # unregistered key
    assert "No SuperNode found with the given public key" in logs["superlink"]
    assert "SuperNode authentication is enabled. All SuperNodes must be registered" \
        in logs["nokey"]  # no key: a node may not register itself
    assert "[/v1/fleet/register-node][ApiError:2001]" in logs["superlink"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["other-ca"]  # it would not trust the SuperLink
    assert "Failed to initialize the connection to the SuperLink" in logs["plain"]  # no TLS
    for name in bad:
        assert "SuperNode ID:" not in logs[name], name
    # and the CLI cannot reach the Control API without the CA or without TLS
    assert cli["other-ca"].returncode != 0 and cli["plain"].returncode != 0
    for c in cli.values():
        assert "Connection to the SuperLink is unavailable" in c.stdout + c.stderr
