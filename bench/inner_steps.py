"""M = 1 or M = 100? The review cannot tell which the paper meant; we measure both.

Runs the sine experiment with the official settings (``preset: paper``: one fixed task, the
2-50-50-1 loss net, alpha = eta = 1e-3) for each M (inner SGD steps unrolled per meta-gradient),
and prints held-out meta-test MSE, learned loss vs MSE at the same lr (``lr_factors: [1]``, the
paper's comparison; no tuned baseline), at each horizon, with the wall time.
Usage: python bench/inner_steps.py [--steps 1,10,100] [--outer-iters 500] [--seeds 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import emit  # bench/machine.py: the RESULT line names its machine

from ml3core.api import meta_train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="1,10,100")
    ap.add_argument("--outer-iters", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-order", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for m in [int(s) for s in args.steps.split(",")]:
        t = time.perf_counter()
        out = meta_train({"task": {"family": "sine"}, "preset": "paper", "seeds": args.seeds,
                          "outer_iterations": args.outer_iters, "inner_steps": m, "first_order": args.first_order,
                          "eval_every": 50, "meta_test": {"horizons": [10, 100, 1000, 5000], "lr_factors": [1],
                                                          "tune_learned": False}})
        seconds = time.perf_counter() - t
        final = out.report["meta_test"]["final"]
        learned, plain = final["learned"]["mse_heldout"], final["mse"]["mse_heldout"]
        row = {"inner_steps": m, "seconds": round(seconds, 1),
               "wins_at_100": sum(a < b for a, b in zip(learned, plain, strict=True)),
               "heldout_at_100": {"learned": sum(learned) / len(learned), "mse": sum(plain) / len(plain)},
               "horizon": {h["steps"]: (h["learned"]["mse_heldout"], h["mse"]["mse_heldout"])
                           for h in out.report["meta_test"]["horizon"]}}
        rows.append(row)
        print(f"M={m:>3}: {seconds:7.1f} s  learned wins {row['wins_at_100']}/{args.seeds} at 100 steps; "
              + "  ".join(f"k={k}: {a:.3f} vs {b:.3f}" for k, (a, b) in row["horizon"].items()), flush=True)
    emit({"bench": "inner_steps", "rows": rows})


if __name__ == "__main__":
    main()
