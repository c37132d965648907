"""Swap and checkpoint files are private, and swap files leave nothing behind.

Swap files are 0600 and have no name while they are used (an O_TMPFILE inode on Linux;
elsewhere a file unlinked, with its 0700 folder, as soon as it is open), so a device
killed with SIGKILL in the middle of training leaves nothing in its swap folder. Weight
files and checkpoints are written 0600 (``atomic_write``), whatever the umask and
whatever mode the file they replace had.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import device_runtime as dr
from device_runtime import swap as swap_mod
from device_runtime.checkpoint import save_checkpoint
from device_runtime.data import synthetic_classification
from device_runtime.swap import SwapDevice
from device_runtime.weights import save_npz_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# `nnfleet train`, with the O_TMPFILE path turned off when argv[1] is "named"
TRAIN = ("import os, sys\n"
         "if sys.argv[1] == 'named':\n"
         "    del os.O_TMPFILE\n"
         "from device_runtime.cli import main\n"
         "sys.exit(main(sys.argv[2:]))\n")


def _mode(path: str | os.PathLike) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _swap_fd(pid: int, folder: str) -> str | None:
    """The ``/proc`` path of the process's open file under ``folder``, once written to."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
            if target.startswith(folder + os.sep) and os.stat(
                    os.path.join(fds, fd)).st_blocks > 0:  # a sparse file until written
                return os.path.join(fds, fd)
        except OSError:  # closed meanwhile
            pass
    return None


@linux_only
@pytest.mark.parametrize("kind", ["tmpfile", "named"])
def test_sigkilled_training_leaves_no_swap_file(kind, tmp_path):
    # Prepare: `nnfleet train` swapping on every step, for far longer than the test waits
    folder = str(tmp_path / "swap")
    env = dict(os.environ, PYTHONPATH=ROOT, NNFLEET_SWAP_DIR=folder)
    p = subprocess.Popen([sys.executable, "-c", TRAIN, kind, "train", "lenet5", "--swap", "on",
                          "--steps", "1000000"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Execute: wait until swapped bytes are in its swap file, then SIGKILL it
        deadline, fd = time.monotonic() + 120, None
        while fd is None and p.poll() is None and time.monotonic() < deadline:
            fd = _swap_fd(p.pid, folder)
            time.sleep(0.05)
        assert fd is not None, f"no written swap file after 120 s (exit {p.poll()})"
        st, target = os.stat(fd), os.readlink(fd)
        p.send_signal(signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
        p.stderr.close()
    # Assert: while it trained, its swap file was 0600 and had no name...
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 0, (target, st)
    assert target.endswith("(deleted)")
    assert ("/swap-" in target) == (kind == "named")  # the folder used only without O_TMPFILE
    # ...and after SIGKILL nothing is left in the (0700) swap folder
    assert os.listdir(folder) == []
    assert _mode(folder) == 0o700


@pytest.mark.parametrize("kind", ["tmpfile", "named"])
def test_swap_file_is_0600_and_nameless(kind, tmp_path, monkeypatch):
    if kind == "named":
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    dev = SwapDevice(1 << 16, str(tmp_path / "swap"))
    try:
        st = os.fstat(dev.fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 0
        assert os.listdir(tmp_path / "swap") == []
        assert _mode(tmp_path / "swap") == 0o700
    finally:
        dev.close()


def test_swap_folder_goes_when_the_open_fails(tmp_path, monkeypatch):
    # Prepare: no O_TMPFILE, and a file system that refuses the swap file itself
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)

    def refuse(path: str, flags: int) -> tuple[int, bool]:
        raise PermissionError(13, "refused", path)

    monkeypatch.setattr(swap_mod, "_open", refuse)
    # Execute
    with pytest.raises(PermissionError):
        SwapDevice(4096, str(tmp_path))
    # Assert: the private folder made for it is gone too
    assert os.listdir(tmp_path) == []


def test_weights_and_checkpoints_are_written_0600(tmp_path):
    # Prepare: a permissive umask, and files already there with mode 0644
    old_umask = os.umask(0o022)
    try:
        w, ckpt = tmp_path / "w.npz", tmp_path / "model.ckpt"
        for path in (w, ckpt):
            path.write_bytes(b"old")
            os.chmod(path, 0o644)
        m = dr.build("mlp", seed=0)
        m.compile(batch_size=8, optimizer="adam", lr=0.01)
        x, y = synthetic_classification((784,), 10, 16, seed=0)
        m.fit(x, y, steps=1)
        # Execute
        save_npz_atomic(str(w), m.get_weights())
        save_checkpoint(str(ckpt), m, epoch=0, iteration=1)
        p = subprocess.run([sys.executable, "-m", "device_runtime", "train", "mlp", "--steps", "1",
                            "--save", str(tmp_path / "cli.npz")], cwd=ROOT, check=False,
                           env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                           timeout=300)
    finally:
        os.umask(old_umask)
    # Assert: owner-only files, real contents, and no temporary file left beside them
    assert p.returncode == 0, p.stderr
    for path in (w, ckpt, tmp_path / "cli.npz"):
        assert _mode(path) == 0o600, path
    assert set(np.load(w).files) == set(m.get_weights())
    assert sorted(os.listdir(tmp_path)) == ["cli.npz", "model.ckpt", "w.npz"]
