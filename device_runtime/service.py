"""The device service: one long-lived process that trains for the board's Flower ClientApp.

Flower 1.41 starts a new ``flwr-clientapp`` process for every message, in both of its
isolation modes (``subprocess``: the SuperNode starts ``flower-superexec``, which starts
it; ``process``: an ``flower-superexec`` started by the user does). A ClientApp that trains
itself pays, per message, the runtime's imports, numba's warm-up and the data loading. With
the service, those are paid once: the service imports, warms up and loads the device's data
at start, and the ClientApp (``device_runtime.flower_client``, when the node config sets
``device-socket``) only forwards the message's arrays and config over a Unix socket and
returns the reply, without importing the runtime.

The service keeps each run's device state in ``--state-dir`` (one ``.npz`` per run,
written atomically and fsynced: it survives a restart of the service or the board), runs
the device program under its RAM cap (the cap measures the service process, which holds
the model, the data and the step), and serves one request at a time. The socket is made
private (0600, in a folder the service creates 0700) and only peers of the service's own
user (or root) are served.

    python -m device_runtime.service --socket /run/nnfleet/device.sock \\
        --data-path /var/lib/nnfleet/device.npz --ram-cap 160MiB
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

from . import wire
from .errors import MemoryCapExceeded, NNFleetError

SETTING_FLAGS = ("ram-cap", "swap", "batch-size", "freeze", "fallbacks")


class Service:
    """What the service holds for its whole life: settings, data, the state folder."""

    def __init__(self, data_path: str, settings: dict[str, str], state_dir: str) -> None:
        from .device import load_device_data, parse_settings

        self.settings = parse_settings(settings)
        t0 = time.perf_counter()
        self.data = load_device_data(data_path)
        self.load_seconds = time.perf_counter() - t0
        self.state_dir = state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.served = 0

    def state_path(self, run: int) -> str:
        return os.path.join(self.state_dir, f"run-{run}.npz")

    def state(self, run: int, device_id: int) -> Any:
        from .device import DeviceState, load_state

        path = self.state_path(run)
        arrays, meta = load_state(path) if os.path.exists(path) else ({}, {})
        return DeviceState(device_id, self.data, self.settings, arrays, meta)

    def handle(self, header: dict[str, Any], arrays: wire.Arrays) -> tuple[dict[str, Any],
                                                                           wire.Arrays]:
        """One request -> (reply header, reply arrays)."""
        from .device import evaluate_device, run_device, save_state

        op = header.get("op")
        if op == "ping":
            return {"ok": True, "served": self.served, "pid": os.getpid(),
                    "data-load-seconds": self.load_seconds}, {}
        run, device = header.get("run"), header.get("device", 0)
        if not isinstance(run, int) or not isinstance(device, int) or run < 0:
            raise NNFleetError("a request needs integer 'run' (>= 0) and 'device'")
        config = header.get("config", {})
        if not isinstance(config, dict):
            raise NNFleetError("a request's 'config' must be an object")
        state = self.state(run, device)
        self.served += 1
        if op == "evaluate":
            return {"ok": True, "metrics": evaluate_device(state, arrays, config)}, {}
        if op != "train":
            raise NNFleetError(f"unknown request {op!r} (train, evaluate, ping)")
        shared, metrics, new_state = run_device(state, arrays, config)
        if not metrics["trained"]:
            return {"ok": False, "error": "cap", "needed": int(metrics.get("needed-bytes", -1)),
                    "cap": int(self.settings.ram_cap or -1), "metrics": metrics}, {}
        save_state(new_state, self.state_path(run))
        return {"ok": True, "metrics": metrics}, dict(shared or {})


def _peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def listen(path: str) -> socket.socket:
    """A private Unix socket at ``path`` (a stale socket file is replaced)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        if not os.path.isdir(path) and _stale(path):
            os.unlink(path)
        else:
            raise NNFleetError(f"{path} exists and is in use (another device service?)")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    srv.listen(4)
    return srv


def _stale(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return False
    except OSError:
        return True
    finally:
        probe.close()


def serve(service: Service, srv: socket.socket, max_requests: int = 0) -> None:
    """Answer requests one at a time until stopped (or after ``max_requests``)."""
    while not max_requests or service.served < max_requests:
        conn, _ = srv.accept()
        with conn:
            if not _peer_allowed(conn):
                continue
            t0 = time.perf_counter()
            op = "?"
            try:
                header, arrays = wire.recv(conn)
                op = str(header.get("op"))
                reply, out = service.handle(header, arrays)
            except MemoryCapExceeded as e:
                reply, out = {"ok": False, "error": "cap", "needed": e.needed, "cap": e.cap,
                              "message": str(e)}, {}
            except NNFleetError as e:
                reply, out = {"ok": False, "error": "device", "message": str(e)}, {}
            except Exception as e:  # a bug must not take the board's trainer down: log it
                traceback.print_exc()
                reply, out = {"ok": False, "error": "device",
                              "message": f"{type(e).__name__}: {e}"}, {}
            try:
                wire.send(conn, reply, out)
            except OSError:
                pass  # the ClientApp went away; its message is lost, not the service
            metrics = reply.get("metrics", {})
            print(f"{op}: {'ok' if reply.get('ok') else reply.get('error')} in "
                  f"{time.perf_counter() - t0:.2f} s" + (
                      f", peak RSS {int(metrics['peak-rss']):,} B" if "peak-rss" in metrics
                      else ""), flush=True)


def request(path: str, header: dict[str, Any], arrays: wire.Arrays | None = None,
            timeout: float | None = None) -> tuple[dict[str, Any], wire.Arrays]:
    """One request to the service at ``path`` (used by the thin ClientApp)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            raise NNFleetError(f"no device service at {path} ({e.strerror or e}): start it "
                               "with python -m device_runtime.service") from None
        wire.send(s, header, arrays)
        return wire.recv(s)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m device_runtime.service",
        description="Train for the board's Flower ClientApp in one long-lived process "
                    "(imports, warm-up and data loading paid once).",
        epilog="example: python -m device_runtime.service --socket /run/nnfleet/device.sock "
               "--data-path device.npz --ram-cap 160MiB")
    p.add_argument("--socket", required=True, help="Unix socket path (the SuperNode's "
                   "node config gives the same path as device-socket)")
    p.add_argument("--data-path", required=True, help="the device's .npz (x, y and "
                   "optionally x_test, y_test)")
    p.add_argument("--state-dir", default=None, help="where each run's device state is "
                   "kept (default: $STATE_DIRECTORY or ~/.local/state/nnfleet/device)")
    p.add_argument("--kernels", choices=["auto", "numba", "numpy"], default="auto",
                   help="kernels of the service (default: auto)")
    p.add_argument("--max-requests", type=int, default=0, help=argparse.SUPPRESS)
    for key in SETTING_FLAGS:
        p.add_argument(f"--{key}", default=None, help=f"the device's {key} (as in node_config)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = args.state_dir or os.environ.get("STATE_DIRECTORY") or os.path.expanduser(
        "~/.local/state/nnfleet/device")
    settings = {k: getattr(args, k.replace("-", "_")) for k in SETTING_FLAGS}
    try:
        from .cli import select_kernels

        kernels = select_kernels(args.kernels)
        from .warmup import warmup

        t0 = time.perf_counter()
        warmup()
        warm = time.perf_counter() - t0
        service = Service(args.data_path, {k: v for k, v in settings.items() if v is not None},
                          state_dir)
        srv = listen(args.socket)
    except (NNFleetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"device service ready on {args.socket}: {kernels} kernels (warm-up {warm:.2f} s), "
          f"{len(service.data.y_train)} training samples (loaded in "
          f"{service.load_seconds:.2f} s), state in {state_dir}", flush=True)
    try:
        serve(service, srv, args.max_requests)
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
        try:
            os.unlink(args.socket)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
