"""The search space: `KEY=log(a,b)`, `KEY=uniform(a,b)`, `KEY=int(a,b)` or `KEY=choice(x,y,...)` over any spec key.

KEY is a spec setting as `--set` names it (`train.lr`, `options.lora_rank`, `model.dropout`). Bounds and choices
are TOML values (`choice(8,16,32)`, `choice("adamw","sgd")`, `choice(true,false)`). A space is checked before any
trial starts: the key must be a setting of the spec (any key under `options`, which the technique validates), the
bounds ordered, and the spec must validate with the lowest and highest values, so a typo fails at once and not in
trial 7. Sampling goes through the Optuna trial handed in (`suggest`); nothing here imports optuna.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from engine import spec as spec_mod
from engine.errors import UserError
from engine.fields import set_value

KINDS = ("log", "uniform", "int", "choice")
_FORM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*(log|uniform|int|choice)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Param:
    """One searched setting: `key` (dotted), `kind` (log | uniform | int | choice) and its bounds or choices."""
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def text(self) -> str:
        """As written on the command line (sweep.json keeps it so a resume rebuilds the same space)."""
        if self.kind == "choice":
            return f"{self.key}=choice({', '.join(_toml(c) for c in self.choices)})"
        return f"{self.key}={self.kind}({self.low:g},{self.high:g})"

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an Optuna trial (the distribution is named by the key)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))  # type: ignore[arg-type]
        return trial.suggest_float(self.key, float(self.low), float(self.high),  # type: ignore[arg-type]
                                   log=self.kind == "log")

    def extremes(self) -> tuple[Any, ...]:
        return self.choices if self.kind == "choice" else (self.low, self.high)


def _toml(value: Any) -> str:
    from engine.fields import toml_value

    return toml_value(value)


def _values(raw: str, what: str) -> list[Any]:
    try:
        return list(tomllib.loads(f"v = [{raw}]")["v"])
    except tomllib.TOMLDecodeError:
        raise UserError(f"--space {what}: the values must be numbers, true/false or quoted text, "
                        f"e.g. choice(8,16,32) or choice(\"adamw\",\"sgd\")", field="space") from None


def parse(text: str) -> Param:
    """One `--space` argument."""
    m = _FORM.match(text)
    if not m:
        raise UserError(f"--space {text!r}: write KEY=log(a,b), KEY=uniform(a,b), KEY=int(a,b) or "
                        f"KEY=choice(x,y,...), e.g. train.lr=log(1e-5,1e-3)", field="space")
    key, kind, raw = m.group(1), m.group(2), m.group(3)
    values = _values(raw, text)
    if kind == "choice":
        if not values:
            raise UserError(f"--space {text!r}: choice(...) needs at least one value", field="space")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"--space {text!r}: a value is listed twice", field="space")
        return Param(key, kind, choices=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"--space {text!r}: {kind}(a,b) takes two numbers, low and high", field="space")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UserError(f"--space {text!r}: the low bound must be below the high one", field="space")
    if kind == "log" and low <= 0:
        raise UserError(f"--space {text!r}: log(a,b) needs a > 0 (it samples the exponent)", field="space")
    if kind == "int":
        if not all(isinstance(v, int) for v in values):
            raise UserError(f"--space {text!r}: int(a,b) takes whole numbers", field="space")
        return Param(key, kind, low=low, high=high)
    return Param(key, kind, low=float(low), high=float(high))


def _known_key(key: str) -> None:
    parts = key.split(".")
    if parts[0] == "options" and len(parts) == 2:
        return  # a technique's own setting: the technique validates it (checked below with the extremes)
    top = {f.name for f in fields(spec_mod.RunSpec)}
    if len(parts) == 1 and parts[0] in top and parts[0] not in spec_mod.SECTIONS and parts[0] != "options":
        return
    if len(parts) == 2 and parts[0] in spec_mod.SECTIONS:
        names = {f.name for f in fields(spec_mod.SECTIONS[parts[0]])}
        if parts[1] in names:
            return
        import difflib

        close = difflib.get_close_matches(parts[1], sorted(names), n=1)
        tip = f" (did you mean {parts[0]}.{close[0]}?)" if close else ""
        raise UserError(f"--space {key}: {parts[0]} has no setting {parts[1]!r}{tip}", field="space")
    raise UserError(f"--space {key}: not a spec setting; use section.key as --set does (train.lr, "
                    f"options.lora_rank)", field="space")


def parse_space(texts: list[str], base: dict[str, Any]) -> tuple[Param, ...]:
    """Every `--space`, checked against the spec `base` (a spec's dict, as `spec.to_dict()` gives)."""
    if not texts:
        raise UserError("give at least one --space, e.g. --space 'train.lr=log(1e-5,1e-3)'", field="space")
    params = tuple(parse(t) for t in texts)
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise UserError(f"--space: {sorted(k for k in keys if keys.count(k) > 1)[0]} is given twice", field="space")
    for p in params:
        _known_key(p.key)
    for i in range(max(len(p.extremes()) for p in params)):  # the spec validates at every bound and choice
        values = {p.key: p.extremes()[min(i, len(p.extremes()) - 1)] for p in params}
        try:
            apply(base, values)
        except UserError as e:
            raise UserError(f"--space: with {', '.join(f'{k}={v!r}' for k, v in values.items())} the spec is "
                            f"not valid: {e}", field="space") from None
    return params


def apply(base: dict[str, Any], values: dict[str, Any]) -> spec_mod.RunSpec:
    """The spec `base` with `values` ({dotted key: value}) set, validated."""
    import json

    data = json.loads(json.dumps(base))
    for key, value in values.items():
        set_value(data, f"{key}={_toml(value)}")
    return spec_mod.from_dict(data)
