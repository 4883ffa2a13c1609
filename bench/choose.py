"""Choose settings on meta-validation tasks only: meta-train each candidate and rank by the worst ratio
against the tuned baseline over the validation horizons (the publishing choice's own score).

No meta-test runs here (its tasks only report, after the choice: bench/scoreboard.py). Each candidate
is a family's defaults plus `key=value` settings, as `ml3 train FAMILY --set` takes them:

    python bench/choose.py digits --seeds 3 --candidate "" --candidate "inner_steps=20" \\
        --candidate "train_horizon=1000 validation_horizons=[100,1000]"

Per candidate: the published seed's worst ratio, the mean of every seed's worst ratio (how robust the
settings are), the published seed's ratio at each horizon and the verdict. The last line is
`RESULT {json}`, candidates best first by the mean of the seeds' worst ratios.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from machine import emit  # noqa: E402  (bench/machine.py: the RESULT line names its machine)
from scoreboard import task_of  # noqa: E402

from app.cli.spec_flags import apply_sets  # noqa: E402
from ml3core.api import meta_train  # noqa: E402

NO_META_TEST = {"tasks": 1, "steps": 0, "horizons": [0], "lr_factors": [1], "tune_learned": False}


def run(family: str, seeds: int, settings: str) -> dict:
    spec = apply_sets({"task": task_of(family), "seeds": seeds, "meta_test": dict(NO_META_TEST)},
                      settings.split())
    start = time.perf_counter()
    out = meta_train(spec)
    v = out.report["validation"]
    worst = [math.inf if w is None else w for w in v["worst_ratio"]]
    return {"settings": settings, "wall_s": round(time.perf_counter() - start, 1),
            "published_worst": _r(worst[v["chosen_index"]]), "mean_worst": _r(sum(worst) / len(worst)),
            "published": {h: _r(r[v["chosen_index"]]) for h, r in v["ratios"].items()}, "verdict": v["verdict"]}


def _r(v):
    return None if v is None or not math.isfinite(v) else round(v, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("family", help="sine, diabetes, 2link, digits, ...")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--candidate", action="append", default=[],
                   help="settings separated by spaces, values as JSON: 'inner_steps=20 loss.inputs=[\"target\"]'")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for settings in args.candidate or [""]:
        row = run(args.family, args.seeds, settings)
        rows.append(row)
        print(f"[{settings or 'defaults'}] worst ratio vs tuned: published {row['published_worst']}, mean over seeds "
              f"{row['mean_worst']}; published per horizon {row['published']}; {row['verdict']} "
              f"({row['wall_s']} s)", flush=True)
    rows.sort(key=lambda r: math.inf if r["mean_worst"] is None else r["mean_worst"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    emit({"bench": "choose", "family": args.family, "seeds": args.seeds, "candidates": rows,
                                  "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                                  "torch": torch.__version__, "threads": 1, "commit": commit.strip()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
