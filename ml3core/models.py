"""Optimizees f_theta as parameter dicts whose leaves carry leading batch dims (seeds, tasks).

Every forward is written with broadcasting matmuls, so one call runs S seeds x T tasks
of independent models: theta leaves are (*batch, out, in), inputs are (*batch, N, in).
"""

from __future__ import annotations

import math

import torch

from .portable import ACTIVATIONS


def mlp_shapes(sizes: list[int], bias: bool = True) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"layers.{i}.weight"] = (fan_out, fan_in)
        if bias:
            shapes[f"layers.{i}.bias"] = (fan_out,)
    return shapes


def mlp_init(sizes: list[int], generators: list, n: int, bias: bool = True) -> dict:
    """n models per generator, stacked (G, n, ...), with torch.nn.Linear's default init
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    One draw per generator, shaped once for all: the per-seed RNG cost stays flat.
    """
    shapes = mlp_shapes(sizes, bias)
    total = sum(math.prod(s) for s in shapes.values())
    flat = torch.stack([torch.rand(n, total, generator=g) for g in generators]) * 2 - 1
    params, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        fan_in = shapes[name.replace("bias", "weight")][1]
        params[name] = flat[..., offset : offset + size].reshape(len(generators), n, *shape) / math.sqrt(fan_in)
        offset += size
    return params


def linear(h, w, b=None):
    """h @ wᵀ + b with batched weights w (..., out, in). A one-input layer (sine's first) is a
    broadcast product: as a matmul with K = 1 it costs about four times as much on a CPU."""
    if w.shape[-1] == 1:
        return h * w.mT if b is None else torch.addcmul(b.unsqueeze(-2), h, w.mT)
    h = h @ w.mT
    return h if b is None else h + b.unsqueeze(-2)


def mlp_forward(params: dict, x, activation: str = "relu"):
    act = ACTIVATIONS[activation]
    n = sum(1 for k in params if k.endswith(".weight"))
    h = x
    for i in range(n):
        h = linear(h, params[f"layers.{i}.weight"], params.get(f"layers.{i}.bias"))
        if i < n - 1:
            h = act(h)
    return h


def stack_params(items: list[dict]) -> dict:
    return {k: torch.stack([p[k] for p in items]) for k in items[0]}


def index_params(params: dict, i) -> dict:
    return {k: v[i] for k, v in params.items()}
