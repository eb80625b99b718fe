"""Typed settings fields: help text, accepted names and number ranges in each field's metadata, checked in one
place; unknown keys refused with a "did you mean"; `section.key=value` overrides; values written as TOML.

Generic over any dataclass of settings (the run spec's sections in engine/spec.py are the ones there are).
"""

from __future__ import annotations

import difflib
import math
import json
import tomllib
from dataclasses import field, fields
from typing import Any

from engine.errors import UserError


def setting(default: Any, help: str, quiet: bool = False, choices: tuple[str, ...] = (), low: str = "") -> Any:
    """A field with its help text; `quiet` ones are left out of spec.toml while they hold their default.
    `choices`: the names it accepts; `low`: "> 0" or ">= 0" for a number (checked by `check`)."""
    metadata = {"help": help, "quiet": quiet, "choices": choices, "low": low}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check(section: str, obj: Any) -> None:
    """Every field's own rule from its metadata: one of its choices, a number in its range."""
    for f in fields(obj):
        if f.metadata.get("choices"):
            choice(section, obj, f.name, f.metadata["choices"])
        if f.metadata.get("low"):
            positive(section, obj, f.name, zero_ok=f.metadata["low"] == ">= 0")


def bad(section: str, name: str, message: str) -> UserError:
    dotted = f"{section}.{name}" if section else name
    return UserError(f"{dotted}: {message}", field=dotted)


def positive(section: str, obj: Any, *names: str, zero_ok: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(section, name, f"must be a number, got {value!r}")
        if value < 0 or (value == 0 and not zero_ok):
            raise bad(section, name, f"must be {'>= 0' if zero_ok else 'positive'}, got {value!r}")


def choice(section: str, obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise bad(section, name, f"unknown value {value!r}: choose one of {', '.join(choices)}")


def check_keys(where: str, given: dict[str, Any], allowed: list[str], aliases: dict[str, str]) -> None:
    """Refuse an unknown key, with a "did you mean" from `aliases` (names other tools use) or a close match."""
    for key in given:
        if key not in allowed:
            alias = aliases.get(key)
            hint = [alias] if alias in allowed else difflib.get_close_matches(key, allowed, n=1)
            tip = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(allowed)}"
            raise UserError(f"{where}{key}: unknown setting{tip}", field=f"{where}{key}")


def set_value(data: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override (CLI `--set`); the value is parsed as TOML."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: use section.key=value", field="set")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
