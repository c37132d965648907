"""The INI syntax NNTrainer's files use (iniparser's dialect), without meaning.

``[section]`` headers (names may be empty: ``[]``), ``key = value`` lines, ``#`` or
``;`` comments at the start of a line or after a value, tabs as spaces, values in
single or double quotes (a quoted value keeps its ``#``). Section names and keys are
case-insensitive: both are compared lower-cased, but section names keep their spelling
(they become layer names). Errors name the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ModelError


@dataclass
class Section:
    name: str  # as written, stripped
    line: int
    items: dict[str, str] = field(default_factory=dict)  # lower-case key -> value
    lines: dict[str, int] = field(default_factory=dict)  # key -> line number


def _value(raw: str) -> str:
    """Strip an inline comment and surrounding quotes."""
    s = raw.strip()
    if s[:1] in ('"', "'"):
        end = s.find(s[0], 1)
        if end > 0:
            return s[1:end]
    for mark in ("#", ";"):
        cut = s.find(mark)
        if cut >= 0:
            s = s[:cut]
    return s.strip().strip('"').strip("'").strip()


def parse_ini(text: str, path: str) -> list[Section]:
    """Sections in file order; duplicate sections or keys are errors."""
    sections: list[Section] = []
    seen: dict[str, int] = {}
    cur: Section | None = None
    for no, raw in enumerate(text.replace("\t", " ").splitlines(), start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                raise ModelError(f"{path}:{no}: not a valid INI file: section header {line!r} has "
                                 "no closing ']'")
            rest = line[end + 1:].strip()
            if rest and rest[0] not in "#;":
                raise ModelError(f"{path}:{no}: not a valid INI file: unexpected text after a "
                                 f"section header: {rest!r}")
            name = line[1:end].strip()
            key = name.lower()
            if key in seen:
                raise ModelError(f"{path}:{no}: section [{name}] already appears on line "
                                 f"{seen[key]} (names are case-insensitive)")
            seen[key] = no
            cur = Section(name, no)
            sections.append(cur)
            continue
        if "=" not in line:
            raise ModelError(f"{path}:{no}: not a valid INI file: expected 'key = value' or "
                             f"'[section]', got {line!r}")
        k, v = line.split("=", 1)
        key = k.strip().lower()
        if not key:
            raise ModelError(f"{path}:{no}: not a valid INI file: a value without a key: {line!r}")
        if cur is None:
            raise ModelError(f"{path}:{no}: not a valid INI file: '{k.strip()}' comes before any "
                             "[section]")
        if key in cur.items:
            raise ModelError(f"{path}:{no}: [{cur.name}] sets '{key}' twice (also on line "
                             f"{cur.lines[key]})")
        cur.items[key] = _value(v)
        cur.lines[key] = no
    return sections
