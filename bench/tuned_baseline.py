"""What the tuned baseline costs: a meta-test with the plain loss at every lr of the grid, against one
at the same lr only.

The lr grid is a batch axis (ml3core.compare): the plain loss trains at 9 lrs (the loss's own and 8
more) as one batch of seeds x tasks x lrs models. Three meta-tests of the sine family's default loss
(as initialised: exactly MSE, so the numbers do not depend on a meta-training run), side by side in
alternating rounds, one torch thread:

    same lr       meta_test.lr_factors = [1]
    tuned         the default grid, the learned loss at its own lr (the 8-lr tuned baseline)
    both tuned    the default grid for both losses (what every meta-test runs by default)
    tuned, kept   "tuned" again on the same tasks: the plain loss's runs are kept (they do not depend
                  on the loss), so only the learned loss trains, as when a service meta-tests a
                  second loss of the same family

Every variant but the last starts with no plain runs kept.

    python bench/tuned_baseline.py                 # 5 seeds x 10 tasks, horizons 10, 100, 1000
    python bench/tuned_baseline.py --rounds 3 --horizon 5000

The last line is `RESULT {json}` with each variant's median time and its ratio to "same lr".
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from machine import emit  # bench/machine.py: the RESULT line names its machine

import ml3core.compare as compare_module
from ml3core.api import parse_spec
from ml3core.losses import init_loss_params
from ml3core.metatest import MetaTestConfig, meta_test
from ml3core.models import stack_params
from ml3core.sampling import stream_generator

VARIANTS = {"same lr": {"lr_factors": [1.0]}, "tuned": {"tune_learned": False}, "both tuned": {},
            "tuned, kept": {"tune_learned": False}}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                         text=True)
    return out.stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--horizon", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    plan = parse_spec({"task": {"family": "sine"}})
    phi = stack_params([init_loss_params(plan.loss, stream_generator(s, "train")) for s in range(args.seeds)])
    horizons = sorted({10, 100, args.horizon})
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            cfg = MetaTestConfig.from_dict({"tasks": args.tasks, "steps": 100, "horizons": horizons, **extra})
            if name != "tuned, kept":
                compare_module._PLAIN.clear()
            start = time.perf_counter()
            meta_test(plan.family, plan.loss, phi, list(range(args.seeds)), cfg, plan.train.inner)
            times[name].append(time.perf_counter() - start)
            print(f"{name:11s} {times[name][-1]:7.2f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: round(median[name] / median["same lr"], 2) for name in VARIANTS}
    print(f"meta-test of {args.seeds} seeds x {args.tasks} tasks to {args.horizon} steps, median of {args.rounds}: "
          + ", ".join(f"{n} {median[n]:.1f} s ({ratio[n]}x)" for n in VARIANTS))
    emit({
        "bench": "tuned_baseline", "commit": commit(), "seeds": args.seeds, "tasks": args.tasks,
        "horizon": args.horizon,
        "grid": len(MetaTestConfig().lr_factors), "median_s": {n: round(v, 2) for n, v in median.items()},
        "range_s": {n: [round(min(t), 2), round(max(t), 2)] for n, t in times.items()}, "vs_same_lr": ratio,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "threads": 1})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
