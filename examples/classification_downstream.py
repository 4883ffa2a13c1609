"""Train a classifier with a learned classification loss fetched from a running ml3 server.

    python examples/classification_downstream.py --server http://127.0.0.1:8000 --loss digits

Fetches the loss (``load_loss`` reads ``.../artifact``), then trains one fresh MLP on a 4-way,
5-shot task of the digits 6-9 (never seen in meta-training) twice from the same initial weights,
once with the learned loss and once with ``F.cross_entropy``, and prints held-out error and
cross-entropy side by side. The learned loss is called exactly like ``F.cross_entropy(logits, labels)``.
Needs torch and scikit-learn (for the images).
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ml3core import load_loss
from ml3core.client import one_line_errors


def task(classes: list[int], shots: int, seed: int):
    """Train and held-out (images, labels) of a k-way task: label i is digit classes[i]."""
    d = load_digits()
    x, digits = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label, c in enumerate(classes):
        idx = (digits == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        train += [(i, label) for i in idx[:shots].tolist()]
        test += [(i, label) for i in idx[shots:].tolist()]
    pick = lambda rows: (x[[i for i, _ in rows]], torch.tensor([lab for _, lab in rows]))  # noqa: E731
    return pick(train), pick(test)


def train(loss_fn, data, k: int, steps: int, lr: float, seed: int, report_at) -> dict:
    (x, y), (xt, yt) = data
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, k))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = {}
    for step in range(steps + 1):
        if step in report_at:
            with torch.no_grad():
                logits = model(xt)
                out[step] = (float((logits.argmax(1) != yt).float().mean()), float(F.cross_entropy(logits, yt)))
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return out


@one_line_errors("classification_downstream", on_404="train and register it first (.venv/bin/ml3 jobs submit "
                 "--family digits --register-as digits --wait) or name another with --loss")
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--loss", default="digits", help="name, name:VERSION or name@ALIAS")
    ap.add_argument("--classes", default="6,7,8,9", help="digits of the new task, comma-separated")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    learned = load_loss(f"{args.server.rstrip('/')}/v1/losses/{args.loss}")
    if learned.arch.get("form") not in ("ce_classwise", "weighted_ce"):
        raise SystemExit(f"{args.loss} is not a classification loss (form {learned.arch.get('form')})")
    lr = learned.spec.get("training", {}).get("inner_lr", 0.1)
    classes = [int(c) for c in args.classes.split(",")]
    data = task(classes, args.shots, args.seed)
    print(f"loss {args.loss}: {learned.extra_repr()}; task: digits {classes}, {args.shots} shots, SGD lr {lr}")
    report_at = sorted({0, 10, 100, args.steps} & set(range(args.steps + 1)))
    curves = {name: train(fn, data, len(classes), args.steps, lr, args.seed, report_at)
              for name, fn in (("learned", learned), ("cross-entropy", F.cross_entropy))}
    print(f"{'step':>6} {'learned err':>12} {'CE err':>8} {'learned CE':>11} {'CE CE':>8}")
    for step in report_at:
        (ea, ca), (eb, cb) = curves["learned"][step], curves["cross-entropy"][step]
        print(f"{step:>6} {ea:>12.4f} {eb:>8.4f} {ca:>11.4f} {cb:>8.4f}")
    if not all(math.isfinite(v) for c in curves.values() for pair in c.values() for v in pair):
        raise SystemExit("training diverged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
