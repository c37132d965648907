"""The architecture, checked from the source: the device runtime is a lower layer (no
edge to experiments/ or server/, no import cycle), modules stay small, the device config
keys exist in one place, and environment switches are read in one module."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("device_runtime", "server", "experiments")
MAX_LINES = 400


def _sources(*tops: str) -> Iterator[tuple[str, str]]:
    """(module name, path) of every .py file under the given top-level folders."""
    for top in tops:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield rel.removesuffix(".__init__"), path


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """Every module ``module`` imports, at top level or inside functions (lazy imports are
    edges too), except under ``if TYPE_CHECKING``; ``from pkg import mod`` is an edge to
    ``pkg.mod`` where that is a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    out: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if _type_checking_only(node):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m != module}


def _graph(*tops: str) -> dict[str, set[str]]:
    mods = dict(_sources(*tops))
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_no_false_one():
    # Prepare: a -> b -> c -> a is one cycle; d -> a is not part of it
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    # Execute / Assert
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_device_runtime_imports_neither_the_lab_nor_the_server():
    graph = _graph("device_runtime")
    assert len(graph) > 50  # the walk found the runtime
    up = sorted((m, d) for m, deps in graph.items() for d in deps
                if d.split(".")[0] in ("experiments", "server"))
    assert up == [], up


def test_the_device_runtime_has_no_import_cycle():
    graph = _graph("device_runtime")
    internal = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    assert _cycles(internal) == []


def test_no_source_file_is_over_the_limit():
    long = []
    for _, path in _sources(*PACKAGES, "tests"):
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long.append((os.path.relpath(path, ROOT), n))
    assert long == [], long


def test_switches_are_read_in_one_module_and_all_documented():
    from device_runtime.switches import SWITCHES

    # Prepare: every read of an NNFLEET_* variable in the packages
    reads = []
    # reads only: a command line may set a switch for its own process (--kernels)
    pattern = re.compile(r"(environ\.get\(|getenv\()\s*[\"']NNFLEET_|"
                         r"environ\[[\"']NNFLEET_\w+[\"']\](?!\s*=[^=])")
    for module, path in _sources(*PACKAGES):
        with open(path, encoding="utf-8") as f:
            if pattern.search(f.read()) and module != "device_runtime.switches":
                reads.append(module)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    # Assert
    assert reads == [], reads
    table = set(re.findall(r"^\| `(NNFLEET_[A-Z_]+)", readme, re.M))
    assert set(SWITCHES) <= table, sorted(set(SWITCHES) - table)


def test_the_device_keys_exist_in_one_place():
    from dataclasses import fields

    from device_runtime.device import DeviceConfig, forwarded_keys, key_specs
    from experiments.config import DEVICE

    every = {f.name.replace("_", "-") for f in fields(DeviceConfig)}
    assert set(key_specs()) == every
    # the server forwards all but what Flower sets itself; an experiment's [train] sets
    # all but what its other sections set
    flower = {k for k, s in key_specs().items() if s["set_by"] == "flower"}
    run = {k for k, s in key_specs().items() if s["set_by"] == "run"}
    assert flower == {"server-round"} and run == {"model", "model-seed", "personal", "seed",
                                                  "shuffle-seed"}
    assert set(forwarded_keys()) == every - flower
    assert set(DEVICE) == every - flower - run
    try:
        import server
    except ImportError:
        pytest.skip("flwr is not installed")
    assert set(server.DEVICE_KEYS) == set(forwarded_keys())


def test_the_config_loader_accepts_exactly_the_device_config_keys(tmp_path):
    from device_runtime.device import key_specs
    from device_runtime.errors import ConfigError
    from experiments.config import load_config

    # a key unset by default (None) is given the value its rule uses when it is unset
    train = {k: s["unset"] if s["default"] is None else s["default"]
             for k, s in key_specs().items()
             if s["set_by"] == "train" and (s["default"], s["unset"]) != (None, None)}
    train["personal-epochs"] = 1  # its default (None: as local-epochs) has no TOML form

    def config(extra: str) -> str:
        path = tmp_path / "c.toml"
        lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                 for k, v in train.items()]
        path.write_text("name = 'keys'\n[train]\n" + "\n".join(lines) + "\n" + extra)
        return str(path)

    cfg = load_config(config(""))
    assert set(cfg["train"]) == set(key_specs()) - {"server-round", "model", "model-seed",
                                                    "personal", "seed", "shuffle-seed"}
    with pytest.raises(ConfigError, match="server-round"):
        load_config(config("server-round = 1\n"))
