"""RAM caps the OS enforces: one memory cgroup per device process of the fleet.

Where this process may make memory cgroups (cgroup v2's ``memory.max``, or cgroup v1's
memory controller, ``memory.limit_in_bytes``), the engine makes one folder for its run under
its own cgroup (``<own>/nnfleet-<pid>-<tag>``), named to its workers in their environment
(:data:`ENV`). In ``worker`` isolation each worker moves into a child of its own,
``w<pid>``, limited before each device task and unlimited between tasks; in ``fork``
isolation each forked device enters its worker's ``f<pid>`` first thing, limited for it
(:mod:`.cgroup_task`). One cgroup per worker, not per task: a removed cgroup whose pages are
still cached lingers in the kernel, and 20,000 device-rounds would leave 20,000 of them.
A cgroup is charged only what is allocated after a process entered it (pages charged before
stay with the cgroup that first touched them), so a task's limit is what the cgroup holds
at task start plus the device's cap less the RSS its process already had (the part of the
cap the runtime's guard counts that this cgroup never sees), plus :data:`HEADROOM`: the
runtime's own guard still stops a device cleanly when it crosses its cap between two
operations; what jumps past it by more than the headroom within one operation (one native
call the 5 ms sampler cannot interrupt) is killed by the kernel, as a real device's OS
would kill it. Swap is kept out: v1 ``memory.memsw.limit_in_bytes`` = the limit where the
kernel has swap accounting, else ``memory.swappiness`` = 0; v2 ``memory.swap.max`` = 0. A
kernel kill is told by the cgroup's OOM-kill counter (v1 ``memory.oom_control``
``oom_kill``, v2 ``memory.events``) and reported as ``cap-exceeded`` with ``oom`` in the
reason.

Folders of an engine killed without cleanup (SIGKILL) are removed by the next engine that
starts under the same cgroup (their pid is gone); every other exit removes them.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import time
from dataclasses import dataclass

from device_runtime.errors import ConfigError

MODES = ("auto", "off", "require")
HEADROOM = 16 << 20  # bytes past its cap a device may jump within one operation
# internal, not a user switch: set by the engine for its workers ("v1|v2 SWAP PATH")
ENV = "_NNFLEET_CGROUP_RUN"
PREFIX = "nnfleet-"
_NOTED: list[str] = []  # the one-line fallback note, said once per process


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str | int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, root, fs type, super options) of every cgroup mount."""
    out = []
    try:
        lines = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            out.append((f[4], f[3], r[0], r[2]))
    return out


def _own_path(version: int) -> str | None:
    """This process's cgroup path in the v1 memory hierarchy or in the v2 one."""
    try:
        lines = _read("/proc/self/cgroup").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if version == 2 and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if version == 1 and "memory" in parts[1].split(","):
            return parts[2]
    return None


def _join(mount: str, root: str, path: str) -> str:
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    return os.path.join(mount, path.lstrip("/"))


@dataclass(frozen=True)
class Cgroups:
    """The run's cgroup folder and how its task cgroups are made."""

    version: int  # 1 or 2
    swap: str  # how swap is kept out: "memsw", "swappiness" (v1) or "swap.max" (v2)
    run: str  # the run's folder; task cgroups are its children

    # ---------------------------------------------------------------- both sides
    def describe(self) -> str:
        what = {"memsw": "memory.memsw.limit_in_bytes = limit", "swappiness":
                "memory.swappiness = 0 (no swap accounting in this kernel)",
                "swap.max": "memory.swap.max = 0"}[self.swap]
        limit = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        return (f"cgroup v{self.version}: device processes in memory cgroups under {self.run} "
                f"({limit}: a task may charge its cap - RSS at task start + "
                f"{HEADROOM >> 20} MiB; no swap: {what})")

    def info(self) -> dict[str, object]:
        return {"mode": "on", "version": self.version, "swap": self.swap, "run": self.run,
                "headroom": HEADROOM}

    def env(self) -> str:
        return f"v{self.version} {self.swap} {self.run}"

    @classmethod
    def from_env(cls, value: str | None) -> Cgroups | None:
        if not value:
            return None
        v, swap, run = value.split(" ", 2)
        return cls(int(v[1:]), swap, run)

    def path(self, name: str) -> str:
        return os.path.join(self.run, name)

    def make(self, name: str) -> str:
        """A child cgroup ``name`` of the run, without a limit (yet) and with no swap."""
        p = self.path(name)
        if os.path.isdir(p):  # left by a process of the same pid: start afresh
            _remove_tree(p, os.path.dirname(self.run))
        os.mkdir(p)
        if self.version == 1 and self.swap == "swappiness":
            _write(os.path.join(p, "memory.swappiness"), 0)
        elif self.version == 2:
            _write(os.path.join(p, "memory.swap.max"), 0)
        return p

    def set_limit(self, path: str, limit: int | None) -> None:
        """Limit the cgroup at ``path`` to ``limit`` bytes, swap included (None: none)."""
        if self.version == 2:
            _write(os.path.join(path, "memory.max"), "max" if limit is None else limit)
            return
        new = -1 if limit is None else int(limit)
        mem = os.path.join(path, "memory.limit_in_bytes")
        if self.swap != "memsw":
            _write(mem, new)
            return
        # memory.memsw.limit_in_bytes may never be below memory.limit_in_bytes
        sw = os.path.join(path, "memory.memsw.limit_in_bytes")
        raising = new < 0 or new >= int(_read(mem))
        for f in ((sw, mem) if raising else (mem, sw)):
            _write(f, new)

    def usage(self, path: str) -> int:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int(_read(os.path.join(path, name)))

    def limit(self, path: str) -> int:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        v = _read(os.path.join(path, name)).strip()
        return -1 if v == "max" or int(v) >= 1 << 62 else int(v)

    def reset_peak(self, path: str) -> None:
        """Start the cgroup's high-water mark afresh (v1 ``memory.max_usage_in_bytes``)."""
        if self.version == 1:
            _write(os.path.join(path, "memory.max_usage_in_bytes"), 0)

    @staticmethod
    def enter(path: str, pid: int = 0) -> None:
        """Move process ``pid`` (0: this one, every thread) into the cgroup at ``path``."""
        _write(os.path.join(path, "cgroup.procs"), pid or os.getpid())

    def oom_kills(self, path: str) -> int:
        """How many processes the kernel killed in this cgroup for going over its limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in _read(os.path.join(path, name)).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def max_usage(self, path: str) -> int:
        """The most memory ever charged to this cgroup (-1 where the kernel does not say)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(os.path.join(path, name)).split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    def oom_reason(self, device: int, cap: int, path: str, limit: int) -> str:
        counter = "memory.oom_control" if self.version == 1 else "memory.events"
        return (f"MemoryCapExceeded: device {device} went over its RAM cap of {cap:,} bytes: "
                f"killed by the kernel (oom) at its cgroup v{self.version} limit of "
                f"{limit:,} bytes ({counter} oom_kill {self.oom_kills(path)}, max usage "
                f"{self.max_usage(path):,} bytes)")

    def worker_oom(self, pid: int, device: int, cap: int | None
                   ) -> tuple[str, dict[str, float]] | None:
        """(reason, metrics) when worker ``pid`` (worker isolation), now dead, was killed by
        the kernel at its cgroup's limit while it ran ``device`` (capped at ``cap``)."""
        path = self.path(f"w{pid}")
        if not cap or not os.path.isdir(path) or self.oom_kills(path) == 0:
            return None
        from .cgroup_task import over_cap_metrics

        limit = self.limit(path)  # still the task's: it died armed
        return self.oom_reason(device, cap, path, limit), over_cap_metrics(cap, limit)

    def drop_worker(self, pid: int) -> None:
        """Remove the cgroups of worker ``pid``, which died."""
        for name in (f"w{pid}", f"f{pid}"):
            self.remove(self.path(name))

    def remove(self, path: str) -> None:
        """Remove the cgroup at ``path`` (its processes back in this process's own)."""
        _remove_tree(path, os.path.dirname(self.run))

    # ---------------------------------------------------------------- the engine's side
    def close(self) -> None:
        """Remove the run's folder and every task cgroup left in it (moving any process
        still in one back to this process's own cgroup first)."""
        _remove_tree(self.run, os.path.dirname(self.run))


def _procs(path: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def _remove_tree(path: str, home: str) -> None:
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        sub = os.path.join(path, name)
        if os.path.isdir(sub):
            _remove_tree(sub, home)
    for pid in _procs(path):
        try:
            Cgroups.enter(home, pid)
        except OSError:
            pass
    for i in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.002 * min(i + 1, 10))


def _sweep(own: str) -> None:
    """Remove the folders of engines under ``own`` that died without removing theirs."""
    try:
        names = os.listdir(own)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue  # its engine is alive
        except ProcessLookupError:
            _remove_tree(os.path.join(own, name), own)
        except PermissionError:
            continue


def _v1() -> tuple[str, str] | str:
    """(own cgroup folder, swap way) of v1's memory controller, or why it cannot be used."""
    own = _own_path(1)
    mount = next(((m, r) for m, r, t, o in _mounts()
                  if t == "cgroup" and "memory" in o.split(",")), None)
    if own is None or mount is None:
        return "no cgroup v1 memory controller is mounted"
    folder = _join(mount[0], mount[1], own)
    if not os.path.exists(os.path.join(folder, "memory.limit_in_bytes")):
        return f"{folder} has no memory.limit_in_bytes"
    swap = "memsw" if os.path.exists(os.path.join(folder, "memory.memsw.limit_in_bytes")) \
        else "swappiness"
    return folder, swap


def _v2() -> str:
    """Own cgroup folder of v2 where its children get the memory controller, or why not."""
    own = _own_path(2)
    mount = next(((m, r) for m, r, t, o in _mounts() if t == "cgroup2"), None)
    if own is None or mount is None:
        return "!no cgroup v2 hierarchy"
    folder = _join(mount[0], mount[1], own)
    try:
        if "memory" not in _read(os.path.join(folder, "cgroup.controllers")).split():
            return "!cgroup v2 has no memory controller here"
        if "memory" not in _read(os.path.join(folder, "cgroup.subtree_control")).split():
            _write(os.path.join(folder, "cgroup.subtree_control"), "+memory")
    except OSError as e:
        return f"!cgroup v2: cannot enable the memory controller below {folder} ({e.strerror})"
    return folder


def open_run(mode: str = "auto") -> tuple[Cgroups | None, str]:
    """The run's cgroups (made now), or None and the one-line reason there are none.

    ``mode``: ``auto`` (use them where they can be made), ``off``, ``require`` (a
    ConfigError where they cannot be made)."""
    if mode not in MODES:
        raise ConfigError(f"fleet.cgroups must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None, "cgroups off ([fleet] cgroups = \"off\"): the runtime's own RAM guard only"
    why = []
    for version in (2, 1):
        if version == 2:
            found = _v2()
            if found.startswith("!"):
                why.append(found[1:])
                continue
            own, swap = found, "swap.max"
        else:
            got = _v1()
            if isinstance(got, str):
                why.append(got)
                continue
            own, swap = got
        _sweep(own)
        run = os.path.join(own, f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}")
        try:
            os.mkdir(run)
            if version == 2:
                _write(os.path.join(run, "cgroup.subtree_control"), "+memory")
            cg = Cgroups(version, swap, run)
            probe = cg.make("probe")  # a limit can really be set
            cg.set_limit(probe, 1 << 30)
            cg.remove(probe)
        except OSError as e:
            why.append(f"cgroup v{version}: cannot make a memory cgroup under {own} "
                       f"({e.strerror})")
            _remove_tree(run, own)
            continue
        atexit.register(cg.close)
        return cg, cg.describe()
    reason = "; ".join(why)
    if mode == "require":
        raise ConfigError(f"fleet.cgroups = \"require\" but no memory cgroup can be made: "
                          f"{reason}")
    return None, f"no memory cgroup can be made ({reason}): RAM caps are held by the " \
                 f"runtime's own guard only"


def note_once(line: str) -> None:
    """Say ``line`` on stderr once per process (the fallback note)."""
    if line in _NOTED:
        return
    _NOTED.append(line)
    print(f"nnfleet: {line}", file=sys.stderr, flush=True)
