"""The scoreboard: does each family's default loss pay off at every horizon?

For every family, meta-train a loss with the family's defaults (no flags, as `ml3 train FAMILY`
runs it), then train fresh models on held-out meta-test tasks with the published loss and with
the plain loss at every lr of the meta-test's grid (ml3core.compare), and report three held-out
learned/plain ratios at 10, 100, 1000 (and 5000 for sine) steps, below 1 the learned loss wins:
vs the plain loss at its best lr for that horizon (the standard), vs the same lr, and both at their
best lr. The published seed's ratios are the headline; the mean over seeds and the worst seed of
the tuned ratio sit beside them, with the verdict the registry shows (meta-validation tasks).

    python bench/scoreboard.py                        # every family (sine, diabetes, 2link, digits)
    python bench/scoreboard.py --families sine --seeds 5
    python bench/scoreboard.py --preset paper         # the paper's settings, for comparison
    python bench/scoreboard.py --families sine-outliers,diabetes-outliers,digits-noisy   # noisy train points

Diabetes: scikit-learn's data set grouped into patient tasks as in examples/dataset_example.py.
Digits: only once the family exists. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from machine import emit  # bench/machine.py: the RESULT line names its machine

from ml3core.api import meta_train
from ml3core.tasks import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
HORIZONS = {"sine": [10, 100, 1000, 5000], "diabetes": [10, 100, 1000], "2link": [10, 100, 1000],
            "digits": [10, 100, 1000], "sine-outliers": [100, 1000], "diabetes-outliers": [100, 1000],
            "digits-noisy": [100, 1000]}
# the targets are stated over 5 seeds (3 for the noisy rows)
SEEDS = {"sine": 5, "diabetes": 5, "2link": 5, "digits": 5, "sine-outliers": 3, "diabetes-outliers": 3,
         "digits-noisy": 3}
# noisy rows: noise on the train points only, judged against the best tuned baseline (plain and robust losses)
NOISY = {"sine-outliers": ("sine", {"outliers": 0.3}), "diabetes-outliers": ("diabetes", {"outliers": 0.2}),
         "digits-noisy": ("digits", {"label_noise": 0.4, "shots": 50})}


def diabetes_task() -> dict:
    """The diabetes patient tasks of examples/dataset_example.py, provided in this process."""
    from sklearn.datasets import load_diabetes

    from ml3core.tasks.dataset import TaskData, provide

    spec = importlib.util.spec_from_file_location("dataset_example", ROOT / "examples" / "dataset_example.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    d = load_diabetes(scaled=False)
    names = list(d.feature_names)
    keep = [i for i, n in enumerate(names) if n != "sex"]
    labels = [f"sex{int(r[names.index('sex')])} age{example.age_band(r[names.index('age')])}" for r in d.data]
    provide("diabetes", TaskData.from_labels(d.data[:, keep], d.target, labels))
    return {"family": "dataset", "dataset": "diabetes"}


def task_of(name: str) -> dict:
    if name in NOISY:
        base, noise = NOISY[name]
        return {**task_of(base), **noise}
    if name == "diabetes":
        return diabetes_task()
    if name == "2link":
        return {"family": "inverse-dynamics", "robot": "2link"}
    return {"family": name}


def score(name: str, seeds: int, preset: str | None) -> dict:
    spec = {"task": task_of(name), "seeds": seeds, "meta_test": {"horizons": HORIZONS[name]}}
    if preset:
        spec["preset"] = preset
    start = time.perf_counter()
    out = meta_train(spec)
    wall = time.perf_counter() - start
    chosen = out.result.chosen
    rows = out.report["meta_test"]["horizon"]
    ratios = {k: {r["steps"]: r[f"ratio_{k}_per_seed"] for r in rows} for k in ("vs_tuned", "same_lr", "both_tuned")}
    tuned = ratios["vs_tuned"]
    noisy = {}
    if "ratio_vs_best_per_seed" in rows[0]:  # a noisy family: the best tuned baseline, plain or robust
        vs_best = {r["steps"]: r["ratio_vs_best_per_seed"] for r in rows}
        noisy = {"vs_best": {h: _round(v[chosen]) for h, v in vs_best.items()},
                 "best_baseline": {r["steps"]: r["best_baseline_per_seed"][chosen]["name"] for r in rows},
                 "mean_over_seeds_vs_best": {h: _round(sum(v) / len(v)) if None not in v else None
                                             for h, v in vs_best.items()}}
    return {
        "family": name, "seeds": seeds, "wall_s": round(wall, 1), "metric": out.report["validation"]["metric"],
        "published": {k: {h: _round(v[chosen]) for h, v in r.items()} for k, r in ratios.items()},
        "tuned_lr": {r["steps"]: r["tuned_lr"][chosen] for r in rows}, "lr": out.report["meta_test"]["lr"],
        "mean_over_seeds_vs_tuned": {h: _round(sum(v) / len(v)) if None not in v else None for h, v in tuned.items()},
        "worst_seed_vs_tuned": {h: _round(max(v)) if None not in v else None for h, v in tuned.items()},
        "verdict": out.report["verdict"], "warnings": out.report["warnings"], **noisy,
    }


def _round(v):
    return None if v is None else round(v, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="sine,diabetes,2link,digits",
                   help="comma list; noisy rows: sine-outliers, diabetes-outliers, digits-noisy")
    p.add_argument("--seeds", type=int, help="seeds per family (default: 5)")
    p.add_argument("--preset", help="a preset for every family (default: each family's default)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.families.split(","):
        if (name == "digits" and "digits" not in FAMILIES) or name not in HORIZONS:
            print(f"skip {name}: no such family here", file=sys.stderr)
            continue
        row = score(name, args.seeds or SEEDS[name], args.preset)
        rows.append(row)
        cells = "  ".join(f"{h}: {r} / {row['published']['same_lr'][h]} / {row['published']['both_tuned'][h]}"
                          for h, r in row["published"]["vs_tuned"].items())
        print(f"{name:9s} published seed, held-out ratios vs tuned / same lr / both tuned  {cells}   "
              f"({row['wall_s']} s; {row['verdict']})", flush=True)
        if "vs_best" in row:
            print(f"{'':9s} vs the best tuned baseline: " + "  ".join(
                f"{h}: {r} ({row['best_baseline'][h]})" for h, r in row["vs_best"].items()), flush=True)
    emit({"bench": "scoreboard", "preset": args.preset or "default", "threads": 1, "families": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
