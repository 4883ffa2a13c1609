"""Where the time of the sine protocol goes, on both sides, on this machine (issue: why one machine gives
half the speedup of another).

The protocol's time is the evaluation: fresh models trained 100 steps with L_phi. The reference trains
one model of 100 points at a time; the engine trains all seeds x tasks (5 x 11 = 55 models) in one
batch. This script measures, on one thread, in one process:

* per model-step time of that training on both sides, and each side's top ops (torch.profiler);
* the batched matmul layouts the engine's shapes can take (MKL picks very different kernels for
  ``h @ wᵀ`` and ``(w @ hᵀ)ᵀ`` on some CPUs), and what the transposed layout for narrow layers (at most
  16 outputs, ``NarrowLinear`` below) would do to one evaluation (against the engine's ``linear``,
  alternating rounds). The engine does not use it: it moves float rounding, so every published
  meta-training number would have to be measured again;
* elementwise throughput at one model's size against the batch's (cache against memory);
* minor page faults per evaluation with glibc's default and with the setting `ml3 train` applies
  (``--allocator default`` runs without it: run it as its own process);
* flushing denormals on against off.

Usage: python bench/profile_protocol.py [--allocator keep|default] [--rounds 4]
The last line is `RESULT {json}`. Needs the bench extra (the reference side uses nn.Modules only).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from machine import emit, keep_freed_memory
from meta_train import Reference, ours
from torch.profiler import ProfilerActivity, profile

import ml3core.models as models

STEPS, SEEDS = 100, 5


class NarrowLinear(torch.autograd.Function):
    """h @ wᵀ computed as (w @ hᵀ)ᵀ, with autograd's own two products as its backward (their fast layouts)."""

    @staticmethod
    def forward(ctx, h, w):
        ctx.save_for_backward(h, w)
        return (w @ h.mT).mT.contiguous()

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        return g @ w, g.mT @ h


ENGINE_LINEAR = models.linear


def narrow_linear(h, w, b=None):
    """The engine's ``linear`` with the transposed product for layers of at most 16 outputs."""
    if w.shape[-1] == 1 or w.shape[-2] > 16 or w.shape[:-2] != h.shape[:-2]:
        return ENGINE_LINEAR(h, w, b)
    h = NarrowLinear.apply(h, w)
    return h if b is None else h + b.unsqueeze(-2)


def cpu_time(fn, rounds: int = 3) -> float:
    """Median process CPU seconds of ``fn()`` (less sensitive than wall time to other processes)."""
    times = []
    for _ in range(rounds):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def top_ops(fn, n: int = 6) -> list[dict]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count,
             "us_per_call": round(e.self_cpu_time_total / max(e.count, 1), 1)} for e in events[:n]]


def reference_side():
    """The reference's evaluation with L_phi: 11 fresh models (the train task and 10 test tasks), 100 steps each."""
    ref = Reference(0)
    xs = torch.cat([ref.x, ref.x_test]), torch.cat([ref.y, ref.y_test])

    def run():
        for x, y in zip(*xs, strict=True):
            ref.train_fresh(ref.loss, x, y, STEPS)

    return run, len(xs[0])


def layouts(rounds: int) -> list[dict]:
    """Both layouts of the engine's batched products (55 models of 100 points)."""
    rows = []
    for k, o in ((100, 10), (10, 1), (2, 50), (50, 50), (50, 1)):
        h, w = torch.randn(55, 100, k), torch.randn(55, o, k)
        plain = cpu_time(lambda h=h, w=w: [h @ w.mT for _ in range(50)], rounds) / 50
        transposed = cpu_time(lambda h=h, w=w: [(w @ h.mT).mT.contiguous() for _ in range(50)], rounds) / 50
        rows.append({"in": k, "out": o, "plain_us": round(plain * 1e6, 1), "transposed_us": round(transposed * 1e6, 1)})
        print(f"batched product 55 x (100 x {k}) -> {o}: h @ wT {plain * 1e6:7.1f} us, "
              f"(w @ hT)T {transposed * 1e6:7.1f} us", flush=True)
    return rows


def elementwise(rounds: int) -> list[dict]:
    """relu's backward (threshold_backward) per element: one model's hidden layer against the batch's."""
    rows = []
    for n in (100 * 100, 55 * 100 * 100):
        g, x = torch.randn(n), torch.randn(n)
        reps = max(10, 2_000_000 // n)
        t = cpu_time(lambda g=g, x=x, reps=reps: [torch.ops.aten.threshold_backward(g, x, 0.0) for _ in range(reps)],
                     rounds) / reps
        rows.append({"elements": n, "gelem_per_s": round(n / t / 1e9, 2)})
        print(f"relu backward over {n:>7d} elements: {n / t / 1e9:5.2f} G elements/s", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--allocator", choices=("keep", "default"), default="keep")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.allocator == "keep":
        keep_freed_memory()
    engine = ours(SEEDS, 100)
    for _ in range(3):
        engine.step()
    engine.evaluate()  # warm: the MSE baseline and the first allocation of every buffer
    models_per_eval = SEEDS * 11
    ref_run, ref_models = reference_side()
    ref_run()

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    engine.evaluate()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    faults = r1.ru_minflt - r0.ru_minflt

    ours_s, ref_s = cpu_time(engine.evaluate, args.rounds), cpu_time(ref_run, args.rounds)
    ours_ms, ref_ms = ours_s / (STEPS * models_per_eval) * 1e3, ref_s / (STEPS * ref_models) * 1e3
    print(f"training with L_phi, per model-step: reference {ref_ms * 1e3:6.1f} us (1 model at a time), engine "
          f"{ours_ms * 1e3:6.1f} us ({models_per_eval} models in one batch): {ref_ms / ours_ms:4.2f}x", flush=True)
    print(f"minor page faults in one evaluation ({args.allocator} allocator): {faults}", flush=True)

    narrow = {True: [], False: []}
    for _ in range(args.rounds):  # alternating rounds, the same process
        for on in (True, False):
            models.linear = narrow_linear if on else ENGINE_LINEAR  # mlp_forward looks it up at each call
            narrow[on].append(cpu_time(engine.evaluate, 1))
    models.linear = ENGINE_LINEAR
    on_s, off_s = statistics.median(narrow[True]), statistics.median(narrow[False])
    print(f"one evaluation with the transposed narrow layout {on_s:.3f} s, as shipped {off_s:.3f} s: "
          f"{off_s / on_s:4.2f}x", flush=True)

    denormal = {}
    for flush in (True, False):
        torch.set_flush_denormal(flush)
        denormal[flush] = cpu_time(engine.evaluate, args.rounds)
    torch.set_flush_denormal(False)
    print(f"one evaluation with denormals flushed {denormal[True]:.3f} s, not flushed {denormal[False]:.3f} s",
          flush=True)

    result = {
        "bench": "profile", "allocator": args.allocator,
        "per_model_step_us": {"reference": round(ref_ms * 1e3, 1), "engine": round(ours_ms * 1e3, 1)},
        "per_model_step_ratio": round(ref_ms / ours_ms, 2),
        "minor_faults_per_evaluation": faults,
        "narrow_layout_evaluation_s": {"on": round(on_s, 3), "off": round(off_s, 3), "speedup": round(off_s / on_s, 2)},
        "denormals_evaluation_s": {"flushed": round(denormal[True], 3), "not_flushed": round(denormal[False], 3)},
        "layouts": layouts(args.rounds),
        "elementwise": elementwise(args.rounds),
        "top_ops": {"engine": top_ops(engine.evaluate), "reference": top_ops(ref_run)},
    }
    for side, ops in result["top_ops"].items():
        print(f"{side} top ops: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops), flush=True)
    emit(result)


if __name__ == "__main__":
    main()
