"""The training flags every task family shares, and ``--set key=VALUE``: used by the CLI (flags)
and the dashboard (their help under the form fields), so they live below both."""

from __future__ import annotations

import json

TRAIN_FLAGS = [  # flag, spec key, type, help
    ("--seeds", "seeds", int, "independent seeds, trained in one batched pass"),
    ("--seed", "seed", int, "first seed id"),
    ("--outer-iters", "outer_iterations", int, "meta-train (outer) iterations"),
    ("--inner-steps", "inner_steps", int, "M: unrolled inner SGD steps per meta-gradient"),
    ("--inner-lr", "inner_lr", float, "alpha: inner SGD learning rate"),
    ("--outer-lr", "outer_lr", float, "eta: outer Adam learning rate"),
    ("--tasks-per-batch", "tasks_per_batch", int, "T: tasks per meta-batch"),
    ("--schedule", "schedule", str, "unrolled (one phi step per unroll) or online (one per inner step)"),
    ("--eval-every", "eval_every", int, "meta-train curve: evaluate every k iterations"),
    ("--eval-steps", "eval_steps", int, "SGD steps of each evaluation"),
    ("--device", "device", str, "cpu or cuda"),
    ("--dtype", "dtype", str, "float32 or float64"),
]


def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(spec: dict, items: list[str] | None) -> dict:
    """Apply ``--set a.b=VALUE`` items (VALUE as JSON when it parses) to a spec, in place."""
    for item in items or []:
        path, _, value = item.partition("=")
        *parents, leaf = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parse_value(value)
    return spec
