"""Evaluate endpoint speed: GET and POST /v1/losses/{id}/evaluate against a bare echo route of the
same server (/v1/_echo parses the same request and returns it), side by side in one run, plus
loss values per second for one large POST batch.

The server is a real ``ml3 serve`` subprocess on a temporary SQLite database holding one loss
(the default sine architecture 2->50->50->1 with freshly initialised weights: speed does not
depend on training). One sequential keep-alive client; endpoints are measured in interleaved
rounds so drifting machine load hits both sides alike.

Usage: python bench/evaluate.py [--seconds 2] [--rounds 5] [--batch 1000000]
Targets: evaluate >= 0.8x the echo route's throughput; >= 1e6 loss values/s in batch.
The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from machine import emit  # bench/machine.py: the RESULT line names its machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed_database(data_dir: Path) -> None:
    """One registered loss, written through the registry like a finished job would."""
    from app.core.config import Settings
    from app.db.session import get_sessionmaker, upgrade
    from app.services import registry
    from ml3core import init_loss_params, make_family
    from ml3core.artifact import Bundle
    from ml3core.losses import LossSpec

    url = Settings(data_dir=data_dir).db_url
    upgrade(url)
    family = make_family({"family": "sine"})
    spec = LossSpec(**family.loss_defaults())
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(0)), spec, {"family": "sine"},
                          {"inner_lr": 1e-3}, {})
    with get_sessionmaker(url).begin() as db:
        registry.register(db, "bench", bundle, None, None)


def start_server(data_dir: Path, **settings: str) -> tuple[subprocess.Popen, str]:
    """``ml3 serve`` on a free port with ``ML3_*`` ``settings`` (default: no job runner)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "ML3_DATABASE_URL"}  # SQLite unless settings name one
    env.update({"ML3_DATA_DIR": str(data_dir), "ML3_RUNNER": "none", **settings})
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # about a minute: every failed try, refused or not ready (503), waits
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not start")


def measure(client: httpx.Client, request, seconds: float) -> list[float]:
    """Latencies (s) of sequential requests for about ``seconds``."""
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        r = request(client)
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"{r.status_code}: {r.text[:300]}")
    return lat


def summary(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"requests": len(lat), "req_per_s": len(lat) / sum(lat), "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per endpoint per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--points", type=int, default=64, help="points in the small POST")
    ap.add_argument("--batch", type=int, default=1_000_000, help="points in the large POST")
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="ml3-bench-"))
    seed_database(data_dir)
    # one client at full speed (the rate limit would 429 it); the echo route is off unless turned on
    proc, url = start_server(data_dir, ML3_EVAL_RATE="0", ML3_BENCH_ROUTES="true")
    try:
        g = torch.Generator().manual_seed(0)
        small = {"pred": torch.randn(args.points, generator=g).tolist(),
                 "target": torch.randn(args.points, generator=g).tolist()}
        query = {"pred": "0.1,0.5", "target": "0.0,1.0"}
        endpoints = {
            "GET echo": lambda c: c.get("/v1/_echo", params=query),
            "GET evaluate": lambda c: c.get("/v1/losses/bench/evaluate", params=query),
            "POST echo": lambda c: c.post("/v1/_echo", json=small),
            "POST evaluate": lambda c: c.post("/v1/losses/bench/evaluate", json=small),
        }
        lat = {name: [] for name in endpoints}
        with httpx.Client(base_url=url, timeout=120) as c:
            for fn in endpoints.values():  # warm up: caches, first-request imports
                measure(c, fn, 0.3)
            for _ in range(args.rounds):
                for name, fn in endpoints.items():
                    lat[name] += measure(c, fn, args.seconds)
            stats = {name: summary(v) for name, v in lat.items()}

            n = args.batch
            pred, target = torch.randn(n, generator=g), torch.randn(n, generator=g)
            b64 = {"pred": base64.b64encode(pred.numpy().tobytes()).decode(),
                   "target": base64.b64encode(target.numpy().tobytes()).decode()}
            as_json = json.dumps({"pred": pred.tolist(), "target": target.tolist()}).encode()
            batch = {}
            for name, send in (("base64", lambda: c.post("/v1/losses/bench/evaluate", json=b64)),
                               ("json", lambda: c.post("/v1/losses/bench/evaluate", content=as_json,
                                                       headers={"content-type": "application/json"}))):
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    r = send()
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200 and r.json()["n"] == n, r.text[:300]
                batch[name] = n / statistics.median(times)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'endpoint':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, s in stats.items():
        print(f"{name:<15} {s['req_per_s']:>8.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f}")
    get_ratio = stats["GET evaluate"]["req_per_s"] / stats["GET echo"]["req_per_s"]
    post_ratio = stats["POST evaluate"]["req_per_s"] / stats["POST echo"]["req_per_s"]
    print(f"evaluate / echo throughput: GET {get_ratio:.2f}x, POST ({args.points} points) {post_ratio:.2f}x "
          "(target >= 0.8x)")
    print(f"batch of {args.batch:,} points: {batch['base64']:,.0f} values/s as base64 float32, "
          f"{batch['json']:,.0f} values/s as JSON lists (target >= 1e6)")
    result = {"evaluate_vs_echo": round(min(get_ratio, post_ratio), 3), "get_vs_echo": round(get_ratio, 3),
              "post_vs_echo": round(post_ratio, 3), "batch_values_per_s": round(batch["base64"]),
              "batch_json_values_per_s": round(batch["json"]),
              "endpoints": {k: {m: round(v, 3) for m, v in s.items()} for k, s in stats.items()}}
    emit(result)


if __name__ == "__main__":
    main()
