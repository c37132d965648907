"""``--help`` on every level of ``nnfleet`` explains itself: each command's parser (the
device's ``plan``, ``train``, ``eval``, ``predict``; the lab's ``simulate`` and every
``bench``) shows its defaults, its choices and at least one example."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from device_runtime.cli import build_parser, main
from experiments import cli as lab


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def _device_parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser(lab.COMMANDS)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = {"nnfleet": top}
    out.update({f"nnfleet {k}": p for k, p in sub.choices.items() if k not in lab.COMMANDS})
    return out


def _lab_parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """The real parser of each lab command, caught as it is about to parse (nothing runs)."""
    def catch(self, *a, **k):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    out = {}
    runs = {f"nnfleet bench {w}": (lambda w=w: lab.bench([w])) for w in lab.BENCHES}
    runs["nnfleet simulate"] = lambda: lab.simulate([])
    for name, go in runs.items():
        with pytest.raises(_Captured) as c:
            go()
        out[name] = c.value.parser
    return out


def _problems(name: str, p: argparse.ArgumentParser) -> list[str]:
    bad = []
    text = p.format_help()
    if "example" not in (p.epilog or ""):
        bad.append(f"{name}: no example in its help")
    fmt = p._get_formatter()
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                          argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
            continue
        opt = a.option_strings[0] if a.option_strings else a.dest
        if not a.help:
            bad.append(f"{name} {opt}: no help text")
            continue
        shown = fmt._get_help_string(a) or ""
        if a.default not in (None, False) and "default" not in shown.lower():
            bad.append(f"{name} {opt}: its default {a.default!r} is not shown")
        if (a.default is None and a.nargs != 0 and a.option_strings and not a.required
                and "none" not in shown.lower() and "default" not in shown.lower()):
            bad.append(f"{name} {opt}: does not say what happens without it")
        for c in a.choices or ():
            if str(c) not in text:
                bad.append(f"{name} {opt}: choice {c!r} not listed")
    return bad


def test_every_parser_shows_defaults_choices_and_an_example(monkeypatch):
    parsers = {**_device_parsers(), **_lab_parsers(monkeypatch)}
    assert {"nnfleet train", "nnfleet eval", "nnfleet predict", "nnfleet plan",
            "nnfleet simulate", "nnfleet bench memory", "nnfleet bench soak"} <= set(parsers)
    problems = [b for name, p in parsers.items() for b in _problems(name, p)]
    assert not problems, "\n".join(problems)
    # the defaults really are in the printed text, e.g.
    assert "(default: best_fit)" in parsers["nnfleet train"].format_help()
    assert "(default: 1000)" in parsers["nnfleet bench fleet"].format_help()


def test_help_prints_and_exits_zero(capsys):
    for cmd in (["train"], ["eval"], ["predict"], ["plan"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: nnfleet {cmd[0]}") and "example" in out
    assert main([]) == 0  # no arguments: what it can do, with examples
    out = capsys.readouterr().out
    assert "examples:" in out and "train" in out and "predict" in out
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert lab.bench([]) == 0
    assert all(w in buf.getvalue() for w in lab.BENCHES) and "example" in buf.getvalue()
