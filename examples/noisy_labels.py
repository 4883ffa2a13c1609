"""Noisy labels and a small trusted set: meta-learn a loss that learns what the labels cannot tell.

The images are scikit-learn's handwritten digits (1797 8x8 images of 0-9, read from the installed
package, no download). A clean test set of 300 images is set aside and never uploaded. The rest
become 10 tasks of about 150 images each. In every task a fifth of the rows are *trusted* (their
labels are right, the CSV's ``trusted`` column is 1); the other rows have 40 % of their labels
replaced by a random other digit (symmetric noise), as labels from a cheap source would be.

The script talks to a running server (``ml3 serve``; ``--server`` or ML3_SERVER):
uploads the CSV with its ``trusted`` column, meta-trains a ``weighted_ce`` loss (a learned weight
on each example's cross-entropy, the Meta-Weight-Net idea; it starts as exactly cross-entropy),
whose objective reads the trusted rows only while the inner steps train on the noisy rest;
meta-tests it on tasks it never saw (the report's best tuned baseline is the best of tuned
cross-entropy and the tuned robust losses: GCE, label smoothing, symmetric CE); then trains a
fresh MLP on the noisy rows of the meta-test tasks side by side with the learned loss, tuned
cross-entropy and tuned GCE (``ml3core.robust.gce``). Each loss's lr (and GCE's q) is chosen on
the trusted rows; the table shows the error on the 300 clean test images.

    pip install -e '.[examples]'     # scikit-learn
    ml3 serve &
    python examples/noisy_labels.py               # about a minute (50 s measured, one runner thread)
    python examples/noisy_labels.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import torch
import torch.nn.functional as F

from ml3core.client import one_line_errors

NOISE = 0.4  # of the untrusted rows' labels, replaced by another digit
TRUSTED = 0.2  # of each task's rows, with their true labels
TASKS, TEST_IMAGES = 10, 300
TRAIN = {"outer_iterations": 200, "inner_steps": 50, "inner_lr": 0.1, "outer_lr": 3e-3, "tasks_per_batch": 4,
         "seeds": 1, "eval_every": 100, "eval_steps": 50, "validation_tasks": 2, "validation_horizons": [100, 300],
         "loss": {"form": "weighted_ce"}}
TASK = {"points": 128, "heldout_points": 30, "model_hidden": [32]}
META_TEST = {"tasks": 2, "steps": 300, "horizons": [100, 300]}
LR_FACTORS = [0.3, 1.0, 3.0]  # of the meta-training lr, for the side-by-side runs
GCE_Q = [0.3, 0.7]


def make_rows(seed: int = 0):
    """(rows, test): rows are (task, pixels, noisy label, trusted, true label); test (pixels, labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    x, digits = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    order = torch.randperm(len(x), generator=g)
    test, rest = order[:TEST_IMAGES], order[TEST_IMAGES:]
    rows = []
    for t, chunk in enumerate(rest.chunk(TASKS)):
        trusted = torch.rand(len(chunk), generator=g) < TRUSTED
        trusted[:10] = True  # at least a few trusted rows, and noisy ones, in every task
        trusted[10:20] = False
        for i, idx in enumerate(chunk.tolist()):
            true = int(digits[idx])
            label = true
            if not trusted[i] and float(torch.rand(1, generator=g)) < NOISE:
                label = (true + 1 + int(torch.randint(9, (1,), generator=g))) % 10  # another digit
            rows.append((f"task{t}", x[idx], label, bool(trusted[i]), true))
    return rows, (x[test], digits[test])


def write_csv(rows, path: str) -> str:
    """``task,p0..p63,trusted,label``: one row per image, the labels as the noisy source gave them."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *[f"p{i}" for i in range(64)], "trusted", "label"])
        for task, pixels, label, trusted, _ in rows:
            w.writerow([task, *[f"{v:.4g}" for v in pixels.tolist()], int(trusted), label])
    return path


def train(loss_fn, x, y, steps: list[int], lr: float, seed: int = 0):
    """A fresh MLP (64-32-10, as meta-trained) by full-batch SGD; its parameters at each of ``steps``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = {}
    for step in range(max(steps) + 1):
        if step in steps:
            out[step] = [p.detach().clone() for p in model.parameters()]
        if step == max(steps):
            break
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model, out


def error(model, params, x, y) -> float:
    with torch.no_grad():
        for p, v in zip(model.parameters(), params, strict=True):
            p.copy_(v)
        out = model(x)
    return float((out.argmax(1) != y).float().mean()) if torch.isfinite(out).all() else math.inf


def side_by_side(learned, rows, test_tasks: list[str], test, lr: float, steps: list[int]) -> list[str]:
    """Train on the noisy rows of the meta-test tasks; per loss and horizon, the lr (and GCE's q) with the
    lowest error on their trusted rows; its error on the clean test images."""
    from ml3core.robust import gce

    pick = [r for r in rows if r[0] in test_tasks]
    xs = torch.stack([r[1] for r in pick])
    mean, std = xs.mean(0), xs.std(0).clamp_min(1e-6)  # standardised inputs, as the service trains
    noisy = [i for i, r in enumerate(pick) if not r[3]]
    trusted = [i for i, r in enumerate(pick) if r[3]]
    labels = torch.tensor([r[2] for r in pick])
    x, y = (xs[noisy] - mean) / std, labels[noisy]
    xv, yv = (xs[trusted] - mean) / std, labels[trusted]
    xt, yt = (test[0] - mean) / std, test[1]
    candidates = {"learned": [("", learned)], "cross-entropy": [("", F.cross_entropy)],
                  "GCE": [(f"q={q}", lambda o, t, q=q: gce(o, F.one_hot(t, 10).float(), q)) for q in GCE_Q]}
    best = {}  # (loss, step) -> (trusted error, test error, setting)
    for name, fns in candidates.items():
        for setting, fn in fns:
            for factor in LR_FACTORS:
                model, at = train(fn, x, y, steps, lr * factor)
                for step in steps:
                    got = (error(model, at[step], xv, yv), error(model, at[step], xt, yt),
                           f"lr {lr * factor:g}{', ' + setting if setting else ''}")
                    if (name, step) not in best or got[0] < best[name, step][0]:
                        best[name, step] = got
    lines = [f"fresh MLP on {len(noisy)} noisy rows of tasks {test_tasks} ({len(trusted)} trusted rows choose the "
             f"lr); error on {len(yt)} clean test images:",
             f"  {'steps':>5}  " + "  ".join(f"{n:>26}" for n in candidates)]
    for step in steps:
        cells = [f"{best[n, step][1]:.3f} ({best[n, step][2]})" for n in candidates]
        lines.append(f"  {step:>5}  " + "  ".join(f"{c:>26}" for c in cells))
    return lines


def report_table(report: dict) -> list[str]:
    """The meta-test's horizon rows: learned, tuned CE, the best tuned baseline and the ratio against it."""
    lines = []
    for row in report["horizon"]:
        best, ratio = row.get("best_baseline") or {}, row.get("ratio_vs_best")
        lines.append(f"  {row['steps']:>4} steps: error learned {row['learned']['error_heldout']:.3f}  tuned CE "
                     f"{row['tuned']['error_heldout']:.3f}  best tuned baseline {best.get('name', '?')} "
                     f"{best.get('error_heldout', math.nan):.3f}  ratio_vs_best "
                     f"{'n/a' if ratio is None else format(ratio, '.2f')}")
    return lines


@one_line_errors("noisy_labels")
def main() -> int:
    from ml3core import load_loss
    from ml3core.client import Client

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", help="default ML3_SERVER or http://127.0.0.1:8000")
    p.add_argument("--out", default="runs/noisy-digits", help="where the CSV and the loss go")
    p.add_argument("--quick", action="store_true", help="a few iterations and short horizons (a smoke run)")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    train_spec, meta_test, steps = TRAIN, META_TEST, [100, 300]
    if args.quick:
        train_spec = {**TRAIN, "outer_iterations": 4, "eval_every": 2, "eval_steps": 5, "validation_horizons": [10]}
        meta_test, steps = {"tasks": 1, "steps": 10, "horizons": [10]}, [10, 30]

    rows, test = make_rows()
    with Client(args.server) as c:
        path = write_csv(rows, os.path.join(args.out, "noisy_digits.csv"))
        with open(path, "rb") as f:
            ds = c.request("POST", "/v1/datasets", files={"file": ("noisy_digits.csv", f, "text/csv")},
                           params={"name": "digits, 40% noisy labels", "task_type": "classification"}).json()
        print(f"data set {ds['id']}: {ds['tasks']} tasks, {ds['rows']} rows, {ds['trusted_rows']} trusted")

        spec = {"task": {"family": "dataset", "dataset": ds["id"], **TASK}, **train_spec, "meta_test": meta_test,
                "register_as": "noisy-digits"}
        job = c.wait(c.submit(spec)["id"])
        if job["status"] != "succeeded":
            print(f"meta-train job {job['id']} {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        loss_id = job["result"]["loss"]
        split = c.report(job["id"])["data"]["tasks"]
        print(f"loss {loss_id}; meta-test tasks {split['test']} (never seen in meta-training)")
        mt = c.wait(c.meta_test(loss_id, **meta_test, seeds=1)["id"], progress=False)
        if mt["status"] != "succeeded":
            print(f"meta-test job {mt['id']} {mt['status']}: {mt['error']}", file=sys.stderr)
            return 1
        print("meta-test (error on the trusted rows of the meta-test tasks):")
        print("\n".join(report_table(c.report(mt["id"]))))
        zip_path = c.pull(loss_id, os.path.join(args.out, "noisy-digits-loss.zip"))

    learned = load_loss(zip_path)  # called like F.cross_entropy(logits, labels)
    lr = learned.spec.get("training", {}).get("inner_lr", TRAIN["inner_lr"])
    print("\n".join(side_by_side(learned, rows, split["test"], test, lr, steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
