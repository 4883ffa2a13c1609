"""The machine a figure was measured on, for every bench's RESULT line (and RESULTS.md beside it).

CPU model and the flags that decide kernels (AVX2, AVX-512), cores, torch version and build
(BLAS, oneDNN), thread settings, the allocator setting and the commit: without them nobody can
tell a stale figure from another machine's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_KEPT = {"on": False}


def keep_freed_memory() -> bool:
    """The allocator setting `ml3 train` and the runner apply (app/jobs/allocator.py), for a bench that
    times the engine as the product runs it; the RESULT line records it."""
    import sys

    sys.path.insert(0, str(ROOT))
    from app.jobs.allocator import keep_freed_memory as keep

    _KEPT["on"] = keep()
    return _KEPT["on"]


def describe() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())
    except (OSError, AttributeError):
        pass
    config = torch.__config__.show()
    blas = "MKL" if torch.backends.mkl.is_available() else ("OpenBLAS" if "openblas" in config.lower() else "other")
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", config)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    return {
        "cpu": cpu,
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512f") for f in flags),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "blas": blas,
        "onednn": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "alloc_conf": os.environ.get("PYTORCH_CPU_ALLOC_CONF") or os.environ.get("MALLOC_CONF"),
        "malloc_keeps_freed": _KEPT["on"],
        "commit": commit + ("+dirty" if dirty else ""),
    }


def line(machine: dict) -> str:
    """One line for RESULTS.md: 'AMD EPYC ... (AVX2), 2 cores, torch ... (MKL, oneDNN ...), 1 thread(s), commit ...'."""
    isa = "AVX-512" if machine["avx512"] else ("AVX2" if machine["avx2"] else "no AVX2")
    return (f"{machine['cpu']} ({isa}), {machine['cores']} cores, torch {machine['torch']} ({machine['blas']}, "
            f"oneDNN {machine['onednn']}), {machine['threads']} thread(s), commit {machine['commit']}")


def emit(result: dict) -> None:
    """Print the machine line and the RESULT line (last) with the machine in it."""
    machine = describe()
    print("machine: " + line(machine), flush=True)
    print("RESULT " + json.dumps({**result, "machine": machine}), flush=True)
