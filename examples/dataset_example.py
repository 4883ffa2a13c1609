"""Bring your own tasks: meta-learn a loss on the diabetes data set that ships with scikit-learn.

442 patients, ten baseline variables and a measure of disease progression a year later
(Efron et al., "Least Angle Regression", 2004; ``sklearn.datasets.load_diabetes``, read from
the installed package, no download). The related tasks are patient groups: one task per sex
and age band (<30, 30-34, ..., 60-64, 65+), 18 tasks of 13 to 43 patients. Each task predicts
progression (output ``y``) from the other nine variables (age, bmi, bp, s1..s6).

The script talks to a running server (``ml3 serve``; ``--server`` or ML3_SERVER):
uploads the CSV, meta-trains a loss, meta-tests it against MSE on the meta-test tasks with the
optimizee it was trained with and with two other architectures, and downloads the loss.

    pip install -e '.[examples]'     # scikit-learn
    ml3 serve &
    python examples/dataset_example.py            # about 1.5 minutes on 2 CPU cores (88 s measured)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from ml3core.client import one_line_errors

AGE_BANDS = [30, 35, 40, 45, 50, 55, 60, 65]  # lower edges of the bands after "<30"
# The settings the README's numbers were measured with: the paper's free-form loss net (form "net"),
# fresh models each iteration and a 20-step unroll (the family's own defaults differ: see README).
TRAIN = {"inner_steps": 20, "inner_lr": 0.01, "outer_lr": 0.003, "outer_iterations": 300, "seeds": 2,
         "tasks_per_batch": 4, "eval_every": 50, "eval_steps": 20, "validation_tasks": 8,
         "schedule": "unrolled", "train_horizon": 100, "loss": {"form": "net"}}
META_TEST = {"tasks": 8, "steps": 20, "horizons": [20, 100, 300], "seeds": 2}
ARCHITECTURES = [None, {"model_hidden": [64], "model_activation": "tanh"},
                 {"model_hidden": [16, 16, 16], "model_activation": "elu"}]  # None: as meta-trained


def age_band(age: float) -> str:
    lower = [b for b in AGE_BANDS if age >= b]
    if not lower:
        return "<30"
    return "65+" if lower[-1] == AGE_BANDS[-1] else f"{lower[-1]}-{lower[-1] + 4}"


def write_diabetes_csv(path: str) -> str:
    """The diabetes data as a CSV of tasks: ``task,age,bmi,bp,s1,...,s6,y``, one row per patient."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    names = list(d.feature_names)
    keep = [i for i, n in enumerate(names) if n != "sex"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *[names[i] for i in keep], "y"])
        for row, target in zip(d.data, d.target, strict=True):
            task = f"sex{int(row[names.index('sex')])} age{age_band(row[names.index('age')])}"
            w.writerow([task, *[f"{row[i]:g}" for i in keep], f"{target:g}"])
    return path


def heldout_table(report: dict) -> list[str]:
    lines = []
    for row in report["horizon"]:
        learned, mse = row["learned"]["mse_heldout"], row["mse"]["mse_heldout"]
        lines.append(f"  {row['steps']:>4} steps: held-out MSE learned {learned:.3f}  MSE {mse:.3f}  "
                     f"ratio {learned / mse:.2f}")
    return lines


@one_line_errors("dataset_example")
def main() -> int:
    from ml3core import load_loss
    from ml3core.client import Client

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", help="default ML3_SERVER or http://127.0.0.1:8000")
    p.add_argument("--out", default="runs/diabetes", help="where the CSV and the loss go")
    p.add_argument("--quick", action="store_true", help="a few iterations only (a smoke run)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train = {**TRAIN, "outer_iterations": 20, "eval_every": 10} if args.quick else TRAIN

    with Client(args.server) as c:
        path = write_diabetes_csv(os.path.join(args.out, "diabetes_tasks.csv"))
        with open(path, "rb") as f:
            ds = c.request("POST", "/v1/datasets", files={"file": ("diabetes_tasks.csv", f, "text/csv")},
                           params={"name": "diabetes by sex and age"}).json()
        print(f"data set {ds['id']}: {ds['tasks']} tasks, {ds['rows']} rows, inputs {ds['inputs']}")

        spec = {"task": {"family": "dataset", "dataset": ds["id"]}, **train,
                "meta_test": {k: v for k, v in META_TEST.items() if k != "seeds"}, "register_as": "diabetes"}
        job = c.wait(c.submit(spec)["id"])
        if job["status"] != "succeeded":
            print(f"meta-train job {job['id']} {job['status']}: {job['error']}", file=sys.stderr)
            return 1
        loss_id = job["result"]["loss"]
        split = c.report(job["id"])["data"]["tasks"]
        print(f"loss {loss_id}; meta-test tasks {split['test']}")

        for arch in ARCHITECTURES:
            mt = c.wait(c.meta_test(loss_id, **META_TEST, **({"task": arch} if arch else {}))["id"], progress=False)
            report = c.report(mt["id"])
            o = report["optimizee"]
            print(f"optimizee {o['meta_test']} (meta-trained with {o['meta_train']}):")
            print("\n".join(heldout_table(report)))

        zip_path = c.pull(loss_id, os.path.join(args.out, "diabetes-loss.zip"))
    loss = load_loss(zip_path)
    print(f"downloaded {zip_path}: {loss}; load_loss({zip_path!r}, raw_units=True) takes targets in the data "
          "set's own units (the bundle carries the standardisation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
