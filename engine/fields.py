"""Typed settings fields: help text, accepted names and number ranges in each field's metadata, checked in one
place; unknown keys refused with a "did you mean"; a value of the wrong type or a TOML date/time refused in one
line; `section.key=value` overrides; values written as TOML that reads back.

Generic over any dataclass of settings (the run spec's sections in engine/spec.py are the ones there are).
"""

from __future__ import annotations

import datetime
import difflib
import math
import json
import tomllib
from dataclasses import field, fields
from pathlib import Path
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
            raise UserError(f"{where}{key_text(key)}: unknown setting{tip}", field=f"{where}{key}")


def key_text(key: Any) -> str:
    """A key as a message shows it: bare where TOML allows, else quoted (a newline never splits the line)."""
    text = str(key)
    return text if text and all(c.isascii() and (c.isalnum() or c in "-_") for c in text) else toml_string(text)


def exists(path: str | Path) -> bool:
    """Whether a file or folder is there; a name the system cannot even look up (too long, `~nobody`) is not."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def set_value(data: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override (CLI `--set`); the value is parsed as TOML."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: use section.key=value", field="set")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise UserError(f"--set {assignment!r}: the key {key.strip()!r} has an empty part; use section.key=value",
                        field="set")
    node = data
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):  # `train.lr.x=1`: lr holds a number, not a table
            where = ".".join(parts[:depth + 1])
            raise UserError(f"--set {key.strip()}: {where} is a value ({node!r}), not a table of settings",
                            field=where)
    node[parts[-1]] = value


def plain_values(value: Any, where: str = "") -> None:
    """Refuse what TOML can hold but a setting never is: dates and times (quote them to mean text)."""
    if isinstance(value, dict):
        for k, v in value.items():
            plain_values(v, f"{where}.{key_text(k)}" if where else key_text(k))
    elif isinstance(value, list):
        for v in value:
            plain_values(v, where)
    elif isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime is a date
        raise UserError(f"{where}: a date or time ({value.isoformat()}) is not a setting's value; quote it "
                        f"(\"{value.isoformat()}\") if you mean text", field=where)


def coerce_types(section: str, cls: Any, values: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Each value of the typed fields of `cls` checked against its type, in place (an int for a float field
    becomes a float); a UserError names the field and says what it must be."""
    types = {f.name: f.type for f in fields(cls)}
    for key, value in values.items():
        expect = types.get(key)
        if key in skip or expect is None:
            continue
        if expect == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(section, key, f"must be a number, got {value!r}")
        if expect == "float" and isinstance(value, int):
            if abs(value) > 1e300:  # float() of a bigger one overflows
                raise bad(section, key, f"must be a number of sensible size, got {value}")
            values[key] = float(value)
        elif expect == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise bad(section, key, f"must be a whole number, got {value!r}")
        elif expect == "bool" and not isinstance(value, bool):
            raise bad(section, key, f"must be true or false, got {value!r}")
        elif expect == "str" and not isinstance(value, str):
            raise bad(section, key, f"must be text, got {value!r}")
        elif expect == "str" and "\0" in value:
            raise bad(section, key, "must not hold a NUL character")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, but characters past U+FFFF kept whole (JSON would write a
    surrogate pair, which TOML refuses) and DEL escaped (TOML refuses it bare)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
