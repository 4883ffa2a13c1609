"""Learned classification loss vs cross-entropy on held-out digits (classes 6-9, 4-way, 5 shots).

Meta-trains a ce_classwise loss (starting as exactly cross-entropy) on 4-way tasks of digits
0-5, then trains fresh MLPs on meta-test tasks of digits 6-9 with each seed's loss and with
cross-entropy at the same lr, and reports test error per seed at 100 and 1000 SGD steps
beside cross-entropy at the best lr of a grid (tuned on the test tasks themselves).

Targets (per seed): at 100 steps learned <= 0.9 x CE (same lr) and <= CE best-of-grid; at
1000 steps learned <= CE. Usage:
    python bench/classification.py [--seeds 5] [--outer-iters 200] [--inner-steps 50] [--set outer_lr=0.003 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import emit  # bench/machine.py: the RESULT line names its machine

from ml3core.api import parse_spec
from ml3core.engine import MetaTrainer
from ml3core.metatest import MetaTestConfig, meta_test


def run(spec: dict, tasks: int = 10) -> dict:
    plan = parse_spec(spec)
    t = time.perf_counter()
    trainer = MetaTrainer(plan.family, plan.loss, plan.train)
    result = trainer.run()
    train_s = time.perf_counter() - t
    cfg = MetaTestConfig(tasks=tasks, steps=1000, horizons=[100, 1000])  # curves: every step, per seed
    test = meta_test(plan.family, plan.loss, result.phi, plan.train.seed_ids, cfg, plan.train.inner_lr)
    m = "error_heldout"
    out = {"spec": {k: v for k, v in spec.items() if k != "task"} | {"task": spec["task"]},
           "train_s": round(train_s, 1), "lr": test["lr"], "per_seed": {}}
    rows = {row["steps"]: row for row in test["horizon"]}
    for k in (100, 1000):
        learned = [row[k] for row in test["curves"]["learned"][m]]
        ce = [row[k] for row in test["curves"]["mse"][m]]
        grid = rows[k]["tuned_per_seed"]
        out["per_seed"][k] = {"learned": learned, "ce": ce, "ce_best_grid": grid, "best_lr": rows[k]["tuned_lr"]}
    p100, p1000 = out["per_seed"][100], out["per_seed"][1000]
    out["pass"] = {
        "100_vs_ce_0.9": sum(a <= 0.9 * b for a, b in zip(p100["learned"], p100["ce"], strict=True)),
        "100_vs_best_grid": sum(a <= b for a, b in zip(p100["learned"], p100["ce_best_grid"], strict=True)),
        "1000_vs_ce": sum(a <= b for a, b in zip(p1000["learned"], p1000["ce"], strict=True)),
    }
    out["mean"] = {k: {n: round(sum(v) / len(v), 4) for n, v in d.items() if isinstance(v, list)}
                   for k, d in out["per_seed"].items()}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--outer-iters", type=int, default=200)
    ap.add_argument("--inner-steps", type=int, default=50)
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="task.key=value or loss.key=value or key=value (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = {"task": {"family": "digits"}, "loss": {}, "seeds": args.seeds, "outer_iterations": args.outer_iters,
            "inner_steps": args.inner_steps, "inner_lr": args.inner_lr, "eval_every": 50}
    for item in args.set:
        key, value = item.split("=", 1)
        value = json.loads(value)
        if "." in key:
            part, k = key.split(".", 1)
            spec[part][k] = value
        else:
            spec[key] = value
    out = run(spec, args.tasks)
    print(json.dumps(out["mean"]), out["pass"], f"{out['train_s']} s", flush=True)
    emit(out)


if __name__ == "__main__":
    main()
