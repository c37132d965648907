"""The cross-platform check on an emulated arm64 board (scripts/board-check), run only when
asked: NNFLEET_BOARD_CHECK=1 (it needs root and Debian's packages, and takes minutes)."""

from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(os.environ.get("NNFLEET_BOARD_CHECK") != "1",
                    reason="the board check runs when NNFLEET_BOARD_CHECK=1")
def test_device_runtime_on_emulated_arm64_matches_this_machine() -> None:
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "board-check")], cwd=ROOT,
                       capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "board: aarch64" in out, out[-2000:]
    assert "max relative difference" in out and "board-check: passed" in out, out[-2000:]
    assert " failed" not in out, out[-4000:]
