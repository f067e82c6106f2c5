"""Checking parsed JSON that came from a file (bundle.json, a publish manifest): a type per key,
bounds and choices, every problem collected and named by its dotted key."""

from __future__ import annotations

import re
import reprlib

KINDS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
}
_PHRASE = {"sha256": "a sha256 (64 hex digits)"}
_TYPES = {int: "integer", float: "number", str: "string", list: "array", dict: "object"}


class Problems(list):
    """A list of problem lines, with ``take`` to read a key and check it on the way."""

    def take(self, obj: dict, key: str, kind: str, where: str | None = None, required: bool = True,
             lo=None, hi=None, choices: tuple | None = None):
        """``obj[key]`` if present, of ``kind`` and within bounds and choices; else None, the
        problem recorded (a missing key only when ``required``)."""
        where = where or key
        if key not in obj:
            if required:
                self.append(f"{where}: missing")
            return None
        v = obj[key]
        if not KINDS[kind](v):
            self.append(f"{where}: {show(v)} is {an(json_type(v))}, expected {_PHRASE.get(kind, an(kind))}")
        elif choices is not None and v not in choices:
            self.append(f"{where}: {show(v)}, expected one of {', '.join(map(repr, choices))}")
        elif (lo is not None and not v >= lo) or (hi is not None and not v <= hi):  # NaN fails both
            bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            self.append(f"{where}: {show(v)} is out of range; must be {bounds}")
        else:
            return v
        return None


def json_type(v) -> str:
    """The JSON name of a parsed value's type."""
    if v is None or isinstance(v, bool):
        return "null" if v is None else "boolean"
    return _TYPES.get(type(v), type(v).__name__)


def an(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def show(v) -> str:
    """A short repr: hostile files hold long strings and deep nesting."""
    return reprlib.repr(v)
