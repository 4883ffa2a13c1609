"""The training flags every task family shares, and ``--set key=VALUE``: used by the CLI (flags); their
help is the spec key's (ml3core.schema), as on the dashboard's form."""

from __future__ import annotations

import json

from ml3core.schema import describe

TRAIN_FLAGS = [  # flag, spec key, type, help (the key's own: ml3core.schema)
    (flag, key, typ, describe(key)) for flag, key, typ in (
        ("--seeds", "seeds", int), ("--seed", "seed", int), ("--outer-iters", "outer_iterations", int),
        ("--inner-steps", "inner_steps", int), ("--inner-lr", "inner_lr", float), ("--outer-lr", "outer_lr", float),
        ("--tasks-per-batch", "tasks_per_batch", int), ("--schedule", "schedule", str),
        ("--eval-every", "eval_every", int), ("--eval-steps", "eval_steps", int), ("--device", "device", str),
        ("--dtype", "dtype", str))]


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
