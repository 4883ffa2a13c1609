"""Strict config parsing shared by every spec: unknown fields and out-of-range values are errors
that name the field, so the service can turn them into a 4xx without guessing."""

from __future__ import annotations

import dataclasses
import math
import typing


class ConfigError(ValueError):
    def __init__(self, loc: str, msg: str):
        super().__init__(f"{loc}: {msg}")
        self.loc, self.msg = loc, msg

    @property
    def errors(self) -> list[dict]:
        return [{"loc": self.loc, "msg": self.msg}]


def check(ok: bool, loc: str, msg: str) -> None:
    if not ok:
        raise ConfigError(loc, msg)


def check_range(value, loc: str, lo=None, hi=None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    check(ok, loc, f"a finite number in [{lo}, {hi}], got {value!r}")


def check_interval(value, loc: str, lo=-1e6, hi=1e6) -> None:
    """A [low, high] pair of finite numbers with low <= high."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    check(ok and lo <= value[0] <= value[1] <= hi, loc, f"a [low, high] pair within [{lo}, {hi}], got {value!r}")


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def check_layers(hidden: list, loc: str) -> None:
    """Hidden layer widths of an MLP (a loss network or an optimizee)."""
    check(len(hidden) <= 8 and all(isinstance(h, int) and 1 <= h <= 4096 for h in hidden), loc,
          "up to 8 layers of 1..4096 units")


def from_dict(cls, data: dict | None, prefix: str):
    """Build dataclass ``cls`` from a JSON-like dict: reject unknown keys and wrong scalar types."""
    if data is None:
        data = {}
    check(isinstance(data, dict), prefix or "spec", "an object")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    check(not unknown, _join(prefix, unknown[0]) if unknown else prefix,
          f"unknown field; known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        want = hints.get(key)
        if want in _SCALARS:
            ok = isinstance(value, _SCALARS[want]) and (want is bool or not isinstance(value, bool))
            check(ok, _join(prefix, key), f"expected {want.__name__}, got {type(value).__name__}")
        elif typing.get_origin(want) in (list, tuple):
            check(isinstance(value, (list, tuple)), _join(prefix, key), "expected a list")
    try:
        return cls(**data)
    except ConfigError as e:
        if not e.loc.startswith(prefix):
            raise ConfigError(_join(prefix, e.loc), e.msg) from None
        raise


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def json_clean(obj):
    """JSON has no NaN/inf: report them as null, in numbers, lists and dicts alike."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj
