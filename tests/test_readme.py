"""The README stays true: its shell blocks marked ``<!-- readme-test: run -->`` run as shown.

The convention (README, "Train a model on your own data"): every ```` ```bash ```` block has,
on the line before it, ``<!-- readme-test: run -->`` (this test runs it) or
``<!-- readme-test: skip REASON -->`` (network installs, runs of minutes, other machines, or
a block with its own test, named in the reason). The run blocks run in README order, each
with ``bash -e``, in one temporary copy of the repository's files (a fresh clone as far as
files go) with an empty ``NUMBA_CACHE_DIR``, and ``nnfleet``/``python`` first on ``PATH``
meaning this interpreter and this checkout. Each block's time is printed (``-s``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from tests.conftest import ROOT

MARK = re.compile(r"^<!-- readme-test: (run|skip)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(text: str) -> list[tuple[int, str, str, str]]:
    """``(line, lang, marker, code)`` of every fenced block (marker '' when there is none)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        mark = MARK.match(lines[i - 1]) if i else None
        label = "" if mark is None else (mark.group(1) if mark.group(1) == "run"
                                         else f"skip {mark.group(2)}".strip())
        out.append((i + 1, m.group(1), label, "\n".join(lines[i + 1:j])))
        i = j + 1
    return out


def _copy_repo(dest: str) -> None:
    """The files a clone has: git's list where there is a repository, else the tree."""
    try:
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], cwd=ROOT, capture_output=True,
                               check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "runs", "*.egg-info", ".*_cache", ".hypothesis"))
        return
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


def test_every_bash_block_is_marked():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = readme_blocks(f.read())
    bash = [b for b in blocks if b[1] in ("bash", "sh", "shell")]
    assert len(bash) >= 10
    unmarked = [f"README.md:{ln}: {code.splitlines()[0][:70]}" for ln, _, mark, code in bash
                if mark not in ("run",) and not mark.startswith("skip ")]
    assert not unmarked, ("put <!-- readme-test: run --> or <!-- readme-test: skip REASON --> "
                          "on the line before each of these blocks:\n" + "\n".join(unmarked))
    assert sum(mark == "run" for _, _, mark, _ in bash) >= 3


def test_readme_run_blocks_work_as_shown(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        runs = [(ln, code) for ln, lang, mark, code in readme_blocks(f.read())
                if mark == "run" and lang in ("bash", "sh", "shell")]
    repo, bindir, cache = tmp_path / "repo", tmp_path / "bin", tmp_path / "numba-cache"
    _copy_repo(str(repo))
    for d in (bindir, cache):
        d.mkdir()
    (bindir / "nnfleet").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m experiments.cli "$@"\n')
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for exe in ("nnfleet", "python"):
        (bindir / exe).chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(repo), NUMBA_CACHE_DIR=str(cache))
    for ln, code in runs:
        t0 = time.perf_counter()
        p = subprocess.run(["bash", "-e", "-c", code], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=900, check=False)
        print(f"README.md:{ln}: {time.perf_counter() - t0:.1f} s")
        assert p.returncode == 0, f"README.md:{ln} failed:\n{code}\n--- stderr:\n{p.stderr}"
        assert "Traceback" not in p.stderr, p.stderr
