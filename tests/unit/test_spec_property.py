"""Any TOML value of any type at any key, in a spec file or through `--set`, gives a valid spec or a one-line
UserError, never another exception (RELIABILITY M10). A valid spec also writes itself back as TOML that loads
to the same spec."""

from __future__ import annotations

import datetime as dt
import json
import math
import dataclasses
from dataclasses import MISSING, fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from engine import spec
from engine.errors import UserError

# Every settings key the spec knows, and some it does not (a foreign name, a typo, a path through a scalar).
KNOWN = [[f.name] for f in fields(spec.RunSpec) if f.name not in spec.SECTIONS] + \
    [[section, f.name] for section, cls in spec.SECTIONS.items() for f in fields(cls)]
UNKNOWN = [["wat"], ["train", "learning_rate"], ["train", "lr", "x"], ["seed", "x"], ["options", "x", "y"],
           ["data", "path", "0"], ["model"], ["options"], ["train"], ["options", "lora_rank"]]
names = st.text(min_size=1, max_size=6)
keys = st.sampled_from(KNOWN + UNKNOWN) | st.lists(names, min_size=1, max_size=3) \
    | st.tuples(st.sampled_from([*spec.SECTIONS, "options"]), names).map(list)


def _good() -> list[tuple[list[str], object]]:
    """Values each known key takes (its default, each of its choices): mixed in, so valid specs are written back."""
    out: list[tuple[list[str], object]] = []
    for key in KNOWN:
        cls = spec.RunSpec if len(key) == 1 else spec.SECTIONS[key[0]]
        f = next(f for f in fields(cls) if f.name == key[-1])
        if f.default is not MISSING and not dataclasses.is_dataclass(f.default) and key != ["data", "path"]:
            out.append((key, f.default))
        out += [(key, c) for c in f.metadata.get("choices", ())]
    return out


GOOD = _good()
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # TOML strings hold no lone surrogates
scalars = (text | st.sampled_from(["", "stdlib", "~nobody-here/x", "a/b", "lora", "bf16", "cosine", "auto"])
           | st.integers() | st.integers(min_value=-2, max_value=70_000)
           | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
           | st.dates() | st.times() | st.datetimes() | st.datetimes(timezones=st.just(dt.timezone.utc)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3), max_leaves=6)


def toml(v: object) -> str:
    """A TOML value as text (tomllib gives these types back)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (dt.date, dt.time)):  # datetime is a date
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + "}"


def outcome(path: Path, overrides: list[str]) -> None:
    try:
        loaded = spec.load(path, overrides)
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip() or "TOML" in str(e), str(e)
        return
    # a valid spec is written back as TOML that reads as the same spec
    written = spec.to_toml(loaded)
    path.write_text(written)
    assert spec.to_toml(spec.load(path)) == written


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


@SETTINGS
@given(st.lists(st.tuples(keys, values) | st.sampled_from(GOOD), min_size=1, max_size=3))
def test_any_value_at_any_key_in_a_spec_file(tmp_path: Path, assignments: list[tuple[list[str], object]]) -> None:
    lines = [".".join(json.dumps(k) for k in key) + " = " + toml(value) for key, value in assignments]
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines) + "\n")
    outcome(path, [])


@SETTINGS
@given(st.tuples(keys, values | text) | st.sampled_from(GOOD), st.booleans())
def test_any_set_override(tmp_path: Path, assignment: tuple[list[str], object], raw: bool) -> None:
    key, value = assignment
    path = tmp_path / "s.toml"
    path.write_text('seed = 1\nname = "x"\n[train]\nlr = 0.001\nmax_steps = 10\n[options]\nk = 1\n')
    outcome(path, [".".join(key) + "=" + (str(value) if raw else toml(value))])
