"""Downstream training with a learned loss fetched from a running ml3 server.

    python examples/downstream_training.py --server http://127.0.0.1:8000 --loss my-loss

The default loss ``my-loss`` is the one the README trains (``ml3 jobs submit --family sine
--register-as my-loss --wait``).

Trains one fresh model on a new sine task twice from the same initial weights, once with the
learned loss and once with MSE, and prints the held-out MSE of both as training goes on.
Only torch and the loader are needed: ``load_loss`` fetches the bundle from ``.../artifact``.
"""

import argparse
import math
import sys

import torch

from ml3core import load_loss
from ml3core.client import one_line_errors


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10),
                               torch.nn.ReLU(), torch.nn.Linear(10, 1))


def train(model, loss_fn, x, y, x_test, y_test, steps: int, lr: float, report_at) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = {}
    for step in range(steps + 1):
        if step in report_at:
            with torch.no_grad():
                out[step] = float(torch.mean((model(x_test) - y_test) ** 2))
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(model(x), y, x).backward()
        opt.step()
    return out


@one_line_errors("downstream_training", on_404="train and register it first (.venv/bin/ml3 jobs submit --family "
                                               "sine --register-as my-loss --wait) or name another with --loss")
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--loss", default="my-loss", help="name, name:VERSION or name@ALIAS (default: the README's)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--amplitude", type=float, default=2.5, help="the new task: A sin(x - phase)")
    ap.add_argument("--phase", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    learned = load_loss(f"{args.server.rstrip('/')}/v1/losses/{args.loss}")
    lr = learned.spec.get("training", {}).get("inner_lr", 1e-3)
    reads_x = "x" in learned.arch["inputs"]
    print(f"loss {args.loss}: {learned.extra_repr()}, meta-trained on {learned.spec.get('task_family')}, lr {lr}")

    g = torch.Generator().manual_seed(args.seed)
    x, x_test = (torch.rand(n, 1, generator=g) * 10 - 5 for n in (100, 1000))
    task = lambda x: args.amplitude * torch.sin(x - args.phase)  # noqa: E731
    y, y_test = task(x), task(x_test)
    report_at = sorted({0, *[int(args.steps * f) for f in (0.01, 0.1, 0.5)], args.steps})
    runs = {
        "learned": lambda pred, target, x: learned(pred, target, x if reads_x else None),
        "MSE": lambda pred, target, x: torch.mean((pred - target) ** 2),
    }
    curves = {name: train(make_model(args.seed), fn, x, y, x_test, y_test, args.steps, lr, report_at)
              for name, fn in runs.items()}
    print(f"held-out MSE on A={args.amplitude} sin(x - {args.phase}) with SGD (lr {lr}):")
    print(f"{'step':>8} {'learned':>12} {'MSE':>12}")
    for step in report_at:
        a, b = curves["learned"][step], curves["MSE"][step]
        print(f"{step:>8} {a:>12.5g} {b:>12.5g}")
    if not all(math.isfinite(v) for c in curves.values() for v in c.values()):
        raise SystemExit("training diverged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
