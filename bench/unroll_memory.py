"""Long unrolls in bounded memory: peak memory and time of one meta-gradient, with and without
``unroll_checkpoint``.

The sine family (MLP 1->100->10->1, 100 points) with the loss of a preset: ``default`` (the
family's default, a weight exp(a*y + b) on each point's squared error) or ``paper`` (the paper's
loss net 2->50->50->1); one seed, one task, M = 10, 100, 1000 inner steps; checkpointing every
k = round(sqrt(M)) steps keeps about M/k + k steps of graph instead of M. Each measurement runs in
a fresh process (peak resident memory is a high-water mark); the meta-gradients of both runs are
compared in that process too.

    python bench/unroll_memory.py [--preset default|paper] [--steps 10,100,1000] [--device cuda]

The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time

from machine import emit  # bench/machine.py: the RESULT line names its machine


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(steps: int, every: int, device: str, preset: str) -> dict:
    """One meta-gradient of an M-step unroll in this process: time, peak memory above the start."""
    import torch

    from ml3core import MetaTrainer
    from ml3core.api import parse_spec

    torch.set_num_threads(1)

    def trainer(m: int, k: int) -> MetaTrainer:
        plan = parse_spec({"task": {"family": "sine"}, "preset": preset, "seeds": 1, "inner_steps": m,
                           "unroll_checkpoint": k, "device": device, "validation_tasks": 1})
        return MetaTrainer(plan.family, plan.loss, plan.train)

    # warm-up outside the measurement, alike in both runs: a 2-step meta-gradient, checkpointed every step
    # (the first backward through a checkpointed unroll imports sympy inside torch: ~33 MB, 0.5 s once)
    warm = trainer(2, 1)
    torch.autograd.grad(warm.meta_objective(*warm.sample_batch(1))[1].sum(), list(warm.phi.values()))
    tr = trainer(steps, every)
    theta, data = tr.sample_batch(1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start_mb = peak_mb(device)
    t = time.perf_counter()
    _, losses = tr.meta_objective(theta, data)
    grads = torch.autograd.grad(losses.sum(), list(tr.phi.values()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    norm = float(sum(g.double().pow(2).sum() for g in grads).sqrt())
    return {"steps": steps, "every": every, "seconds": round(seconds, 3),
            "peak_mb": round(peak_mb(device) - (0 if device.startswith("cuda") else start_mb), 1),
            "grad_norm": norm}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="10,100,1000")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="default", choices=["default", "paper"], help="the sine preset's loss")
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: M k
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.device, args.preset)))
        return 0
    rows = []
    for m in [int(s) for s in args.steps.split(",")]:
        row = {"M": m}
        for label, k in (("full", 0), ("checkpoint", max(1, round(math.sqrt(m))))):
            out = subprocess.run([sys.executable, __file__, "--one", str(m), str(k), "--device", args.device,
                                  "--preset", args.preset],
                                 capture_output=True, text=True, check=True)
            row[label] = json.loads(out.stdout.strip().splitlines()[-1])
        f, c = row["full"], row["checkpoint"]
        row["memory_ratio"] = round(c["peak_mb"] / f["peak_mb"], 3) if f["peak_mb"] > 0 else None
        row["time_ratio"] = round(c["seconds"] / f["seconds"], 2)
        row["same_gradient"] = math.isclose(c["grad_norm"], f["grad_norm"], rel_tol=1e-4)
        rows.append(row)
        print(f"M={m:5d}: full {f['peak_mb']:8.1f} MB {f['seconds']:7.2f} s | checkpoint every {c['every']:3d}: "
              f"{c['peak_mb']:8.1f} MB {c['seconds']:7.2f} s | memory x{row['memory_ratio']}, "
              f"time x{row['time_ratio']}, same meta-gradient: {row['same_gradient']}", flush=True)
    emit({"bench": "unroll_memory", "preset": args.preset, "device": args.device, "threads": 1,
                                  "machine": platform.machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
