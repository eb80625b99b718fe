"""Frozen dataclasses <-> the JSON objects of the run folder's files (events, commands, status).

One codec for all of them, so that the writer and the reader check the same thing:
- a field's JSON key is its name, or `key("train/loss")` in its metadata for the metric names that
  hold a slash (they keep their names on disk);
- values are checked against the field's annotation (int, float, str, bool, Any, `X | None`,
  `list[X]`, `dict[str, X]`) when a record is built, so a writer can never write a line that its
  reader refuses; a float field takes a JSON integer too (json writes 2.0 as 2.0, but a hand-written
  line may say 2);
- a field whose default is None is left out of the JSON while it is None; any other field is always
  written, null included (the line keeps the shape the job has always written);
- keys that this version does not know (a newer writer added them: keys are added, never renamed) are
  kept in `extra` and written back, so reading a line and writing it again loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")
EXTRA = "extra"


class Invalid(ValueError):
    """A record that breaks its schema; the message says which key and why."""


def key(name: str, **kw: Any) -> Any:
    """A dataclass field stored under another JSON key (one with a slash: `train/loss`)."""
    return dataclasses.field(metadata={"key": name}, **kw)


def extra_field() -> Any:
    """The `extra` field: keys a newer writer added, kept as read."""
    return dataclasses.field(default_factory=dict)


@cache
def _fields(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """(attribute, JSON key, resolved type, always written) per field, `extra` excluded."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == EXTRA or not f.init:
            continue
        always = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, f.metadata.get("key", f.name), hints[f.name], always or f.default is not None))
    return tuple(out)


def json_keys(cls: type) -> tuple[str, ...]:
    return tuple(k for _, k, _, _ in _fields(cls))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str) -> None:
    """Raise Invalid unless `value` (as JSON gives it) fits the annotation `tp`."""
    if tp is Any:
        return
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return check_value(value, option, where)
            except Invalid:
                continue
        raise Invalid(f"{where}: {value!r} is not {' or '.join(_type_name(a) for a in typing.get_args(tp))}")
    if tp is type(None):
        if value is not None:
            raise Invalid(f"{where}: expected null, got {value!r}")
        return
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        for i, item in enumerate(value):
            check_value(item, args[0] if args else Any, f"{where}[{i}]")
        return
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise Invalid(f"{where}: expected an object, got {value!r}")
        args = typing.get_args(tp)
        for k, item in value.items():
            check_value(item, args[1] if args else Any, f"{where}.{k}")
        return
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise Invalid(f"{where}: expected {_type_name(tp)}, got {value!r}")


def validate(obj: Any) -> None:
    """Check every field of a record (from __post_init__: a bad record is never built)."""
    name = type(obj).__name__
    for attr, json_key, tp, _ in _fields(type(obj)):
        check_value(getattr(obj, attr), tp, f"{name}.{json_key}")
    extra = getattr(obj, EXTRA, None)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise Invalid(f"{name}.extra must be a mapping")
        clash = set(extra) & set(json_keys(type(obj)))
        if clash:
            raise Invalid(f"{name}.extra repeats known keys {sorted(clash)}")


def encode(obj: Any) -> dict[str, Any]:
    """The record as its JSON object (known keys in field order, then `extra`)."""
    out: dict[str, Any] = {}
    for attr, json_key, _, always in _fields(type(obj)):
        value = getattr(obj, attr)
        if value is None and not always:
            continue
        out[json_key] = list(value) if isinstance(value, tuple) else value
    out.update(getattr(obj, EXTRA, None) or {})
    return out


def load_json(line: bytes | str) -> Any:
    """One line of a run-folder file as JSON; Invalid (not a traceback) when it is not JSON."""
    try:
        return json.loads(line)
    except ValueError as e:
        raise Invalid(f"not JSON ({e})") from None


def decode(cls: type[T], data: Any, *, skip: tuple[str, ...] = ()) -> T:
    """A record of `cls` from a JSON object; Invalid with the reason if it does not fit. Keys in `skip`
    are the caller's (a tag such as `type`)."""
    if not isinstance(data, Mapping):
        raise Invalid(f"expected a JSON object, got {type(data).__name__}")
    known = {json_key: attr for attr, json_key, _, _ in _fields(cls)}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in data.items():
        if k in skip:
            continue
        if k in known:
            kwargs[known[k]] = v
        else:
            extra[k] = v
    missing = [json_key for attr, json_key, _, _ in _fields(cls) if attr not in kwargs and _required(cls, attr)]
    if missing:
        raise Invalid(f"{cls.__name__}: missing {', '.join(missing)}")
    if extra:
        if not any(f.name == EXTRA for f in dataclasses.fields(cls)):
            raise Invalid(f"{cls.__name__}: unknown keys {', '.join(sorted(extra))}")
        kwargs[EXTRA] = extra
    try:
        return cls(**kwargs)
    except TypeError as e:  # a bad value that __post_init__ could not name (should not happen)
        raise Invalid(f"{cls.__name__}: {e}") from None


def _required(cls: type, attr: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == attr)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
