"""The configuration engine: value kinds and the walk over section dataclasses.

A topology file is described by frozen dataclasses (model.py), one per section; each YAML key
is a field whose metadata names its :class:`_Kind` (what it accepts, how it is converted and
shown) and its meaning. This module knows nothing of shardproxy's keys: it builds a section from
YAML data collecting every problem with its key path, lists the leaf keys, and derives the
reference table and the settings that differ between two configurations from the same fields.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class _Invalid(Exception):
    """A value is wrong. ``problems`` are (path suffix such as ``[2]`` or "", message) pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _bad(message: str) -> _Invalid:
    return _Invalid(("", message))


def _show(value: object) -> str:
    """A value for messages, spelt as in YAML where it matters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@dataclass(frozen=True)
class _Kind:
    """A kind of leaf value: ``type`` is the reference's "type" column, ``convert`` turns the YAML
    value into the field's value or raises :class:`_Invalid`; ``display`` renders a field value
    back in YAML form (defaults in the reference, ``changed_settings``)."""

    type: str
    convert: Callable[[object], Any]
    display: Callable[[Any], str] = str
    choices: tuple[str, ...] = ()


def _key(kind: _Kind, meaning: str, *, secret: bool = False) -> dict[str, object]:
    """Metadata of a leaf key. ``secret`` values are never printed."""
    return {"kind": kind, "meaning": meaning, "secret": secret}


def _int_value(value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _bad(f"must be {need} (got {_show(value)})")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?b?)\s*$", re.IGNORECASE)


def _size(value: object, minimum: int = 1) -> int:
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else ""
        if match and unit in _SIZE_UNITS and int(match.group(1)) >= minimum:
            return int(match.group(1)) * _SIZE_UNITS[unit]
        what = "a positive size" if minimum else "a size (0 to disable)"
        raise _bad(f"must be {what} such as 65536, 64kb or 512mb (got {_show(value)})")
    return _int_value(value, minimum)


def _show_size(value: int) -> str:
    if not value:
        return "0"
    for unit in ("gb", "mb", "kb"):
        if value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and not value:
        raise _bad('must be a string; quote it, e.g. "{}"')
    raise _bad(f"must be a string; quote it if it looks like a number (got {_show(value)})")


def _optional_string(value: object) -> str | None:
    return None if value is None else _string(value)


def _name(value: object) -> str:
    text = _string(value)
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise _bad(f"must be a non-empty name without spaces (got {_show(value)})")
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"must be true or false (got {_show(value)})")
    return value


def _choice(noun: str, choices: tuple[str, ...]) -> _Kind:
    def convert(value: object) -> str:
        text = _string(value)
        if text not in choices:
            raise _bad(f"unknown {noun} {text!r} (one of {', '.join(choices)})")
        return text

    return _Kind("one of " + ", ".join(f"`{c}`" for c in choices), convert, choices=choices)


def _list(value: object, item: Callable[[object], Any], what: str) -> tuple[Any, ...]:
    """A YAML list converted item by item; every bad item is reported with its index."""
    if not isinstance(value, list):
        raise _bad(f"must be a list of {what} (got {_show(value)})")
    items: list[Any] = []
    problems: list[tuple[str, str]] = []
    for i, element in enumerate(value):
        try:
            items.append(item(element))
        except _Invalid as exc:
            problems.extend((f"[{i}]{sub}", message) for sub, message in exc.problems)
    if problems:
        raise _Invalid(*problems)
    return tuple(items)


def _show_list(value: tuple[Any, ...] | frozenset[Any]) -> str:
    return "[" + ", ".join(sorted(map(str, value))) + "]"


def _show_string(value: str | None) -> str:
    return "null" if value is None else f'"{value}"'


POSITIVE_INT = _Kind("positive integer", lambda v: _int_value(v, 1))


NON_NEGATIVE_INT = _Kind("integer >= 0", lambda v: _int_value(v, 0))


SIZE = _Kind("size in bytes (65536, 64kb, 512mb)", _size, _show_size)


SIZE_OR_ZERO = _Kind(
    "size in bytes (65536, 64kb, 512mb; 0 disables)", lambda v: _size(v, 0), _show_size
)


NAME = _Kind("name", _name)


OPTIONAL_STRING = _Kind("string or null", _optional_string, _show_string)


BOOL = _Kind("boolean", _bool, lambda v: "true" if v else "false")


def _yaml_keys(cls: type) -> Iterator[dataclasses.Field[Any]]:
    """The fields of a section dataclass that are YAML keys, in declaration order."""
    for f in dataclasses.fields(cls):
        if f.metadata:
            yield f


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _build(cls: type, data: object, path: str, problems: list[str]) -> Any:
    """Build section ``cls`` from YAML ``data`` at ``path`` ("" or "name." / "name[i]."),
    appending problems. Returns None when the section has problems."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{path.rstrip('.') or '(top level)'}: must be a mapping of keys")
        return None
    before = len(problems)
    keys = {f.name: f for f in _yaml_keys(cls)}
    for key in data:
        if key not in keys:
            problems.append(f"{path}{key}: unknown key")
    values: dict[str, Any] = {}
    for name, f in keys.items():
        here = path + name
        if name not in data:
            if _required(f):
                problems.append(f"{here}: required key is missing")
            continue
        value = data[name]
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], value, here + ".", problems)
        elif "sections" in f.metadata:
            if not isinstance(value, list):
                problems.append(f"{here}: must be a list (got {_show(value)})")
                continue
            values[name] = tuple(
                _build(f.metadata["sections"], item, f"{here}[{i}].", problems)
                for i, item in enumerate(value)
            )
        else:
            try:
                values[name] = f.metadata["kind"].convert(value)
            except _Invalid as exc:
                problems.extend(f"{here}{sub}: {message}" for sub, message in exc.problems)
    if len(problems) > before:
        return None
    return cls(**values)


def _leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """(key path, field) of every leaf key, sections expanded (list items as ``name[].key``)."""
    for f in _yaml_keys(cls):
        if "section" in f.metadata:
            yield from _leaves(f.metadata["section"], f"{prefix}{f.name}.")
        elif "sections" in f.metadata:
            yield from _leaves(f.metadata["sections"], f"{prefix}{f.name}[].")
        else:
            yield prefix + f.name, f


def _display(f: dataclasses.Field[Any], value: Any) -> str:
    kind: _Kind = f.metadata["kind"]
    if f.metadata["secret"] and value is not None:
        return "(hidden)"
    return kind.display(value)


def _lookup(config: Any, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def reference_markdown(cls: type) -> str:
    """A reference table of every leaf key of section dataclass ``cls``: type, default, meaning."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, f in _leaves(cls):
        kind: _Kind = f.metadata["kind"]
        if _required(f):
            default = "required"
        else:
            value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            default = f"`{_display(f, value)}`"
        rows.append(f"| `{path}` | {kind.type} | {default} | {f.metadata['meaning']} |")
    return "\n".join(rows)


def changed_settings(cls: type, old: Any, new: Any) -> list[tuple[str, str, str]]:
    """(key path, old, new) for every leaf outside lists that differs, values shown in YAML
    form. Secrets show as ``(hidden)`` but are still compared."""
    changes = []
    for path, f in _leaves(cls):
        if "[]" in path:
            continue
        old_value, new_value = _lookup(old, path), _lookup(new, path)
        if old_value != new_value:
            changes.append((path, _display(f, old_value), _display(f, new_value)))
    return changes
