"""Noise on the train points of a task: label noise (classification) and outliers (regression).

Only ``x``/``y`` (the points the inner steps train on) are corrupted; ``x_heldout``/``y_heldout``
(the meta-objective and every metric: the trusted set) stay clean. A family draws the noise from
the same per-seed generator as its tasks, *after* its existing draws and only when the rate is
above 0, so a run without noise is bit-for-bit what it was.

Exactly ``round(rate * N)`` of a task's N train points are corrupted (chosen uniformly).

``task.label_noise``: a rate, or ``{"rate": r, "kind": "symmetric" | "pairflip"}`` (default
symmetric). symmetric: a corrupted label goes to a uniformly chosen *other* class; pairflip:
class c goes to c + 1 mod k (k: the classes of the task).

``task.outliers``: a rate, or ``{"rate": r, "kind": "uniform" | "student_t", "scale": s, "df": 1 | 2}``
(default uniform). With sd the standard deviation of the task's clean train targets (per output)
and m their mean: uniform replaces a target by m + U(-1, 1)·s·sd (default s = 5: gross outliers);
student_t adds s·sd·t_df to it (default s = 1, df = 2: heavy tails, infinite variance; df = 1 is
Cauchy), drawn by the inverse CDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import check, check_range

MAX_RATE = 0.9
LABEL_KINDS = ("symmetric", "pairflip")
OUTLIER_KINDS = ("uniform", "student_t")
DEFAULT_SCALE = {"uniform": 5.0, "student_t": 1.0}


@dataclass(frozen=True)
class LabelNoise:
    rate: float = 0.0
    kind: str = "symmetric"


@dataclass(frozen=True)
class Outliers:
    rate: float = 0.0
    kind: str = "uniform"
    scale: float = 5.0
    df: int = 2


def _rate(value, loc: str) -> float:
    check_range(value, loc, 0, MAX_RATE)
    return float(value)


def label_noise(value, loc: str = "task.label_noise") -> LabelNoise:
    """A ``task.label_noise`` value (a rate or {rate, kind}), checked; raises ConfigError naming the field."""
    if not isinstance(value, dict):
        return LabelNoise(_rate(value, loc))
    unknown = sorted(set(value) - {"rate", "kind"})
    check(not unknown, f"{loc}.{unknown[0]}" if unknown else loc, "unknown field; known fields: ['kind', 'rate']")
    check("rate" in value, f"{loc}.rate", "required: the fraction of train labels corrupted, in [0, 0.9]")
    kind = value.get("kind", "symmetric")
    check(kind in LABEL_KINDS, f"{loc}.kind", f"one of {LABEL_KINDS}, got {kind!r}")
    return LabelNoise(_rate(value["rate"], f"{loc}.rate"), kind)


def outliers(value, loc: str = "task.outliers") -> Outliers:
    """A ``task.outliers`` value (a rate or {rate, kind, scale, df}), checked; raises ConfigError naming the field."""
    if not isinstance(value, dict):
        return Outliers(_rate(value, loc))
    unknown = sorted(set(value) - {"rate", "kind", "scale", "df"})
    check(not unknown, f"{loc}.{unknown[0]}" if unknown else loc,
          "unknown field; known fields: ['df', 'kind', 'rate', 'scale']")
    check("rate" in value, f"{loc}.rate", "required: the fraction of train targets replaced, in [0, 0.9]")
    kind = value.get("kind", "uniform")
    check(kind in OUTLIER_KINDS, f"{loc}.kind", f"one of {OUTLIER_KINDS}, got {kind!r}")
    scale = value.get("scale", DEFAULT_SCALE[kind])
    check_range(scale, f"{loc}.scale", 0, 1e4)
    df = value.get("df", 2)
    check(df in (1, 2) and not isinstance(df, bool), f"{loc}.df", "1 (Cauchy) or 2, for kind student_t")
    check(kind == "student_t" or "df" not in value, f"{loc}.df", "only for kind student_t")
    return Outliers(_rate(value["rate"], f"{loc}.rate"), kind, float(scale), int(df))


def _chosen(shape, rate: float, g: torch.Generator) -> torch.Tensor:
    """(n, N) bool: exactly round(rate * N) points of each of n tasks, uniformly chosen."""
    n, N = shape
    m = round(rate * N)
    order = torch.rand(n, N, generator=g).argsort(-1)
    mask = torch.zeros(n, N, dtype=torch.bool)
    mask.scatter_(1, order[:, :m], True)
    return mask


def flip_labels(y: torch.Tensor, noise: LabelNoise, g: torch.Generator) -> torch.Tensor:
    """One-hot train labels (n, N, k) of one seed's n tasks with ``noise`` applied (a new tensor)."""
    n, N, k = y.shape
    mask = _chosen((n, N), noise.rate, g)
    c = y.argmax(-1)
    if noise.kind == "symmetric":
        shift = torch.randint(1, k, (n, N), generator=g)
    else:
        shift = torch.ones(n, N, dtype=torch.int64)
    flipped = torch.where(mask, (c + shift) % k, c)
    return torch.nn.functional.one_hot(flipped, k).to(y.dtype)


def add_outliers(y: torch.Tensor, noise: Outliers, g: torch.Generator) -> torch.Tensor:
    """Train targets (n, N, D) of one seed's n tasks with a fraction replaced by outliers (a new tensor)."""
    n, N, D = y.shape
    mask = _chosen((n, N), noise.rate, g).unsqueeze(-1)
    mean = y.mean(-2, keepdim=True)
    sd = y.std(-2, keepdim=True, correction=0) if N > 1 else torch.ones_like(mean)
    u = torch.rand(n, N, D, generator=g, dtype=torch.float64)
    if noise.kind == "uniform":
        bad = mean + ((u * 2 - 1) * noise.scale).to(y.dtype) * sd
    else:
        u = u.clamp(1e-12, 1 - 1e-12)
        if noise.df == 1:
            t = torch.tan(math.pi * (u - 0.5))
        else:
            t = (2 * u - 1) / torch.sqrt(2 * u * (1 - u))
        bad = y + (t * noise.scale).to(y.dtype) * sd
    return torch.where(mask, bad, y)
