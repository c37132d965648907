"""Fork isolation: a device task run in a child forked from the warm worker, killed by a
watchdog if its RSS goes over the device's cap, and (where the run has memory cgroups,
:mod:`experiments.fleet.cgroup`) limited by the kernel in a cgroup of its own."""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.fleet.cgroup_task import Confinement
    from experiments.fleet.protocol import Options

KILL_POLL_SECONDS = 0.002
CHILD = [0]  # the device process forked by this worker, while it runs


def _after_fork_in_child() -> None:
    # device_runtime.rss keeps a psutil.Process made at import time, i.e. of the parent:
    # point it at this process so current_rss() measures the device, not the zygote.
    import psutil

    from device_runtime import rss
    rss._PROC = psutil.Process()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_forked(run_one: Any, kind: str, state: Any, shared: dict, config: dict,
               fault: str | None, options: Options, conf: Confinement | None
               ) -> tuple[Any, dict, Any]:
    """Run ``run_one(kind, state, shared, config, fault, options)`` in a child forked from
    this warm process; kill it if it goes over its cap.

    A forked child does not yet map the file-backed pages it shares with this process
    (libraries, JIT caches), so its RSS reads tens of MiB lower than a fresh device
    process would. The difference at fork time is charged to the child: its cap is
    lowered by it, and its reported RSS figures are raised by it, so that caps mean the
    same in both isolation modes. With ``conf`` (the worker's cgroup for its children) the
    child enters it first thing, limited for this task.
    """
    import psutil

    from device_runtime import rss
    from experiments.fleet.cgroup import HEADROOM
    from experiments.fleet.cgroup_task import over_cap_metrics
    from experiments.fleet.faults import DeviceFailure

    parent_rss = rss.current_rss()
    cap = state.settings.ram_cap
    limit = conf.arm(cap, parent_rss) if conf is not None and cap else None
    r, w = os.pipe()
    pipe_w = w
    # the child's collections skip the inherited objects: no copy-on-write. Young garbage is
    # collected first: unfrozen, what was frozen joins the oldest generation, which is
    # collected too rarely to free a task's cycles (the worker grew ~2 KB a device)
    gc.collect(1)
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        CHILD[0] = pid
    if pid == 0:  # child: run, send the result, exit without cleanup handlers
        os.close(r)
        code = 0
        try:
            if limit is not None:
                assert conf is not None
                conf.cg.enter(conf.path)
            unseen = max(0, parent_rss - rss.current_rss())
            win = rss.open_window()  # the child's whole life, as worker isolation's
            if state.settings.ram_cap:
                state.settings.ram_cap -= unseen
            res = run_one(kind, state, shared, config, fault, options)
            m = res[1]
            for k in ("peak-rss", "baseline-rss", "ram-cap", "needed-bytes"):
                if m.get(k, -1) > 0:
                    m[k] += unseen
            data = pickle.dumps(("ok", res[0], m, res[2].arrays, res[2].meta, unseen))
            peak = rss.window_peak(win) + unseen
            if cap and peak > cap and (kind != "train" or m.get("trained")):
                # over its cap after training (evaluation, the reply's pickling): as a
                # worker does, drop the update and the new state
                m.update({"cap-exceeded": 1.0, "ram-cap": float(cap)})
                if kind == "train":
                    m.update({"trained": 0.0, "needed-bytes": float(peak),
                              "peak-rss": float(peak)})
                data = pickle.dumps(("ok", None, m, None, None, unseen))
        except BaseException as e:  # noqa: BLE001 - the parent reports it
            data = pickle.dumps(("error", f"{type(e).__name__}: {e}"))
            code = 1
        with os.fdopen(pipe_w, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(w)
    timeout = options.timeout
    proc = psutil.Process(pid)
    chunks: list[bytes] = []
    killed_rss = 0
    unseen = 0
    # with a cgroup, the kernel stops a fast overshoot at the cap + its headroom; the
    # child's own window a slow one; this watchdog is left as the last resort
    kill_at = (cap or 0) + (2 * HEADROOM if limit is not None else 0)
    timed_out = False
    with os.fdopen(r, "rb") as f:
        t_fork = time.perf_counter()
        while True:
            ready, _, _ = select.select([f], [], [], KILL_POLL_SECONDS)
            if ready:
                b = os.read(f.fileno(), 1 << 20)
                if not b:
                    break
                chunks.append(b)
                continue
            if timeout and not timed_out and time.perf_counter() - t_fork > timeout:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
            if cap and not killed_rss:
                try:
                    child = proc.memory_info().rss
                except psutil.Error:
                    continue
                if time.perf_counter() - t_fork < 0.01:
                    unseen = max(unseen, parent_rss - child)  # as the child measured it
                if child + unseen > kill_at:
                    killed_rss = child + unseen
                    os.kill(pid, signal.SIGKILL)
    _, wstatus = os.waitpid(pid, 0)
    CHILD[0] = 0
    oom = None
    if limit is not None:
        assert conf is not None
        if conf.killed() and os.WIFSIGNALED(wstatus):
            oom = conf.cg.oom_reason(state.device_id, cap, conf.path, limit)
        conf.disarm()
    from device_runtime.device import METRIC_KEYS
    if oom is not None:  # the kernel was first: the device is over its cap either way
        raise DeviceFailure("cap-exceeded", oom, over_cap_metrics(cap, limit))
    if timed_out and not killed_rss:
        raise DeviceFailure("timeout", f"device {state.device_id} did not answer within "
                            f"{timeout:g} s (faults.timeout): its process was killed")
    if killed_rss:
        metrics = {k: -1.0 for k in METRIC_KEYS}
        metrics.update({"trained": 0.0, "cap-exceeded": 1.0, "needed-bytes": float(killed_rss),
                        "peak-rss": float(killed_rss), "ram-cap": float(cap or -1),
                        "num-examples": float(state.data.y_train.shape[0]), "steps": 0.0})
        return None, metrics, None
    if os.WIFSIGNALED(wstatus):
        name = signal.Signals(os.WTERMSIG(wstatus)).name
        raise DeviceFailure("killed", f"device {state.device_id}'s process was killed by "
                            f"{name} mid-task")
    msg = pickle.loads(b"".join(chunks))
    if msg[0] != "ok":
        raise DeviceFailure("raised", msg[1])
    if msg[1] is None and msg[2].get("cap-exceeded"):
        return None, msg[2], None
    state.arrays, state.meta = msg[3], msg[4]
    return msg[1], msg[2], state
