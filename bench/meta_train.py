"""Meta-training speed: ml3core's batched engine against the official algorithm built on `higher`.

Both run the sine experiment with the official settings (MLP 1->100->10->1, loss 2->50->50->1,
M = 1, alpha = eta = 1e-3, 100 points) on one thread, side by side in this one process:

* per-seed meta-iteration time at S = 1 and S = 100 seeds (the reference loops over seeds);
* the full protocol: 5 seeds x 500 outer iterations with an evaluation every 10 iterations, as
  the official code does it (fresh models trained 100 SGD steps on the meta-train task and on 10
  test tasks, with MSE and with the current learned loss: 22 trainings per evaluation). Ours
  evaluates the meta-train task and 10 meta-validation tasks with the learned loss every 10
  iterations (all seeds and tasks in one batch) and the MSE baseline once, since it does not
  depend on phi; it also reports held-out points and picks the published seed.

* the whole `ml3 train sine --seeds 5 --preset paper` command in a fresh process (meta-training,
  the horizon report, bundles, figures) against the same reference protocol.

Usage: python bench/meta_train.py [--quick] [--parts seed,protocol,command] [--repeat 3]
       python bench/meta_train.py --device cuda --parts gpu,device-protocol --gpu-seeds 1000,10000
The last line is `RESULT {json}`. Needs the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
from machine import emit, keep_freed_memory  # bench/machine.py: the RESULT line names its machine

from ml3core import LossSpec, MetaTrainer, TrainConfig, make_family

# --- the reference: the official algorithm, nn.Modules + higher, one seed at a time --------------


class SineModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 10), nn.ReLU(), nn.Linear(10, 1))

    def forward(self, x):
        return self.net(x)


class LearnedLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50, bias=False), nn.ReLU(), nn.Linear(50, 50, bias=False),
                                 nn.ReLU(), nn.Linear(50, 1, bias=False), nn.Softplus())
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, pred, target):
        return self.net(torch.cat([pred, target], dim=1)).mean()


class Reference:
    """One seed of the official loop, evaluation included."""

    def __init__(self, seed: int):
        self.seed = seed
        torch.manual_seed(seed)
        self.x = torch.rand(1, 100, 1) * 4 - 2  # the single meta-train task y = sin(x - pi)
        self.y = torch.sin(self.x - torch.pi)
        self.x_test = torch.rand(10, 100, 1) * 10 - 5  # 10 test tasks, A ~ U[0.2, 5], phase ~ U[-pi, pi]
        amplitude, phase = torch.rand(10, 1, 1) * 4.8 + 0.2, (torch.rand(10, 1, 1) * 2 - 1) * torch.pi
        self.y_test = amplitude * torch.sin(self.x_test - phase)
        self.loss = LearnedLoss()
        self.meta_opt = torch.optim.Adam(self.loss.parameters(), lr=1e-3)

    def meta_iteration(self):
        import higher  # the reference alone needs it (the GPU parts run without the bench extra)

        model = SineModel()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            diffopt.step(self.loss(fmodel(self.x[0]), self.y[0]))
            task_loss = (fmodel(self.x[0]) - self.y[0]).pow(2).mean()
            self.meta_opt.zero_grad()
            task_loss.backward()
            self.meta_opt.step()

    def train_fresh(self, loss_fn, x, y, steps=100):
        model = SineModel()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            return float((model(x) - y).pow(2).mean())

    def evaluate(self):
        """The official evaluation, run every 10 iterations: the train task and the 10 test tasks,
        each trained 100 steps with MSE and with the learned loss (after reseeding, as it does)."""
        mse = nn.MSELoss()
        for xs, ys in ((self.x, self.y), (self.x_test, self.y_test)):
            for loss_fn in (mse, self.loss):
                torch.manual_seed(self.seed)
                for x, y in zip(xs, ys, strict=True):
                    self.train_fresh(loss_fn, x, y)


def reference_protocol(seeds=5, iterations=500, eval_every=10):
    for s in range(seeds):
        ref = Reference(s)
        for i in range(iterations):
            ref.meta_iteration()
            if i % eval_every == 0:
                ref.evaluate()


# --- ours -------------------------------------------------------------------------------------


def ours(seeds, iterations=500, device="cpu"):
    family = make_family({"family": "sine"})
    spec = LossSpec.from_dict(None, **family.loss_defaults())
    return MetaTrainer(family, spec, TrainConfig(seeds=seeds, outer_iterations=iterations, device=device))


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def per_iteration(step, n, device="cpu", warmup=3):
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n


def whole_command(iterations: int) -> float:
    """Wall time of `ml3 train sine --seeds 5 --preset paper` (the official protocol's settings) in a
    fresh process on one thread: meta-training, the horizon report (5000 SGD steps with L_phi and
    with MSE on 10 held-out tasks per seed), the bundles and the figures."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "app.cli", "train", "sine", "--seeds", "5", "--preset", "paper",
               "--threads", "1", "--outer-iters", str(iterations), "--out", out]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd[2:])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return time.perf_counter() - t


def gpu_seeds(device: str, counts: list[int]) -> list[dict]:
    """One meta-iteration of S seeds in one pass on ``device``: time per seed-iteration, peak memory."""
    cuda = device.startswith("cuda")
    rows = []
    for s in counts:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        big = ours(s, device=device)
        t = per_iteration(big.step, 20, device=device)
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:  # the process's high-water mark (KiB on Linux)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"seeds": s, "iteration_ms": round(t * 1e3, 3), "us_per_seed_iteration": round(t / s * 1e6, 3),
                     "peak_mb": round(peak, 1)})
        print(f"{device}: {s} seeds in one pass: {t * 1e3:.2f} ms per meta-iteration, {t / s * 1e6:.2f} us per "
              f"seed-iteration, peak {rows[-1]['peak_mb']} MB", flush=True)
        del big
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and a 100-iteration protocol")
    ap.add_argument("--parts", default="seed,protocol,command",
                    help="comma list of: seed (per-seed iteration), protocol (5 x 500 iterations, reference "
                         "and ours), command (the whole `ml3 train sine --seeds 5`), gpu (--gpu-seeds on --device), "
                         "device-protocol (ours on --device against ours on the CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-seeds", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=1, help="run everything this many times: median and range")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    keep_freed_memory()  # both sides run in this process with the setting `ml3 train` uses
    iters = 100 if args.quick else 500
    n = 10 if args.quick else 30
    runs = []
    for r in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {r + 1} of {args.repeat}", flush=True)
        runs.append(measure(args, parts, iters, n))
    result = runs[0] if args.repeat == 1 else {**summarize(runs), "runs": runs}
    emit(result)


def summarize(runs: list[dict]) -> dict:
    """Each speedup as the median and range over the runs (what the README quotes is the median)."""
    out = {"repeat": len(runs)}
    for k in runs[0]:
        if k.endswith("speedup") or k.startswith("per_seed_speedup"):
            vals = sorted(r[k] for r in runs)
            out[k] = {"median": round(statistics.median(vals), 2), "min": vals[0], "max": vals[-1]}
    print("median (range): " + ", ".join(f"{k} {v['median']}x ({v['min']}-{v['max']})" for k, v in out.items()
                                         if isinstance(v, dict)), flush=True)
    return out


def measure(args, parts: set, iters: int, n: int) -> dict:
    """One side-by-side run of every part asked for."""
    result = {"protocol_iterations": iters}

    if "seed" in parts:  # rounds alternate reference and ours; each side's fastest round counts
        ref1, ours1 = Reference(0), ours(1)
        refs, ours100 = [Reference(s) for s in range(100)], ours(100)
        rounds = {"ref_s1": [], "our_s1": [], "ref_s100": [], "our_s100": []}
        for _ in range(3 if args.quick else 5):
            rounds["ref_s1"].append(per_iteration(ref1.meta_iteration, n))
            rounds["our_s1"].append(per_iteration(ours1.step, n))
            rounds["ref_s100"].append(per_iteration(lambda: [r.meta_iteration() for r in refs], 1, warmup=1) / 100)
            rounds["our_s100"].append(per_iteration(ours100.step, max(3, n // 3)) / 100)
        ref_s1, our_s1, ref_s100, our_s100 = (min(rounds[k]) for k in ("ref_s1", "our_s1", "ref_s100", "our_s100"))
        print(f"per-seed meta-iteration, S=1:   reference {ref_s1 * 1e3:8.3f} ms   ours {our_s1 * 1e3:8.3f} ms   "
              f"speedup {ref_s1 / our_s1:6.1f}x", flush=True)
        print(f"per-seed meta-iteration, S=100: reference {ref_s100 * 1e3:8.3f} ms   ours {our_s100 * 1e3:8.3f} ms   "
              f"speedup {ref_s100 / our_s100:6.1f}x", flush=True)
        result.update({
            "per_seed_ms_s1": {"reference": round(ref_s1 * 1e3, 4), "ours": round(our_s1 * 1e3, 4)},
            "per_seed_ms_s100": {"reference": round(ref_s100 * 1e3, 4), "ours": round(our_s100 * 1e3, 4)},
            "per_seed_speedup_s1": round(ref_s1 / our_s1, 2),
            "per_seed_speedup_s100": round(ref_s100 / our_s100, 2)})

    if "command" in parts:  # first: a broken command fails the bench before the long reference run
        cmd_s = whole_command(iters)
    if parts & {"protocol", "command"}:
        t = time.perf_counter()
        reference_protocol(5, iters)
        ref_protocol = time.perf_counter() - t
        result["reference_protocol_s"] = round(ref_protocol, 3)
    if "protocol" in parts:
        t = time.perf_counter()
        ours(5, iters).run()
        our_protocol = time.perf_counter() - t
        print(f"protocol (5 seeds x {iters} iterations, eval every 10): reference {ref_protocol:7.2f} s   "
              f"ours {our_protocol:6.2f} s   speedup {ref_protocol / our_protocol:6.1f}x", flush=True)
        result.update({"ours_protocol_s": round(our_protocol, 3),
                       "protocol_speedup": round(ref_protocol / our_protocol, 2)})
    if "command" in parts:
        print(f"whole `ml3 train sine --seeds 5 --preset paper` ({iters} iterations, horizon report to 5000 steps): "
              f"{cmd_s:7.2f} s   speedup over the reference protocol {ref_protocol / cmd_s:6.1f}x", flush=True)
        result.update({"command_s": round(cmd_s, 3), "command_speedup": round(ref_protocol / cmd_s, 2)})

    if "gpu" in parts:
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        result["gpu"] = {"device": name,
                         "rows": gpu_seeds(args.device, [int(c) for c in args.gpu_seeds.split(",")])}
    if "device-protocol" in parts:
        times = {}
        for dev in ("cpu", args.device):
            t = time.perf_counter()
            out = ours(5, iters, device=dev).run()
            times[dev] = time.perf_counter() - t
            times[dev + "_published_seed"] = out.validation["chosen_seed"]
        print(f"protocol on {args.device}: {times[args.device]:.2f} s against {times['cpu']:.2f} s on the CPU "
              f"(one thread)", flush=True)
        result["device_protocol"] = {"device": args.device, **{k: round(v, 3) if isinstance(v, float) else v
                                                                for k, v in times.items()}}
    return result


if __name__ == "__main__":
    main()
