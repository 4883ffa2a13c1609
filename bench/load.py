"""Load on a real ``ml3 serve`` with API keys required (ML3_AUTH=on): first C concurrent clients
evaluate a loss for T seconds (POST, a small JSON batch; each client has its own read key, as
separate users would, so the per-key rate limit is not what is measured), then J tiny meta-train
jobs are submitted at once and followed until every one is final. Nothing may fail and no job
may be lost: every accepted job must end succeeded and register exactly one loss version.

The server runs the embedded default (SQLite, one local runner process, jobs one at a time) on
a temporary data directory; ML3_MAX_ACTIVE_JOBS is raised to J so one submit key may queue them all
(its ML3_MAX_KEY_WRITES submits at once: the others are answered 429 and retried after Retry-After).

Usage: python bench/load.py [--clients 50] [--seconds 30] [--jobs 100] [--record]
The last line is `RESULT {json}`; --record appends the figures to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from evaluate import seed_database, start_server  # noqa: E402  (seed: one registered loss "bench")
from machine import emit  # noqa: E402  (bench/machine.py: the RESULT line names its machine)

JOB = {"task": {"family": "sine", "points": 10, "heldout_points": 10, "model_hidden": [10]},
       "loss": {"hidden": [10]}, "seeds": 1, "outer_iterations": 1, "eval_every": 1, "eval_steps": 1,
       "validation_tasks": 1, "meta_test": {"steps": 1, "tasks": 1, "horizons": [1]},
       "register_as": "load-jobs"}
FINAL = ("succeeded", "failed", "canceled")


def make_keys(data_dir: Path, readers: int) -> tuple[list[str], str]:
    from app.core.config import Settings
    from app.db.session import get_sessionmaker
    from app.services import security

    with get_sessionmaker(Settings(data_dir=data_dir).db_url).begin() as db:
        reads = [security.create_key(db, "read", f"load-client-{i}")[1] for i in range(readers)]
        return reads, security.create_key(db, "submit", "load-jobs")[1]


def percentiles(lat: list[float]) -> dict:
    lat = sorted(lat)
    at = lambda q: round(1e3 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(1e3 * lat[-1], 2) if lat else None}


async def evaluate_load(url: str, keys: list[str], seconds: float, points: int) -> dict:
    """Each client sends its next request as soon as the last one is answered."""
    body = {"pred": [0.1 * i for i in range(points)], "target": [0.05 * i for i in range(points)]}
    lat, errors = [], []
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        end = time.perf_counter() + seconds

        async def client(key: str):
            headers = {"Authorization": f"Bearer {key}"}
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    r = await http.post("/v1/losses/bench/evaluate", json=body, headers=headers)
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors.append(f"{type(e).__name__}: {e}")
                if ok:
                    lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in keys))
        elapsed = time.perf_counter() - start
    return {"clients": len(keys), "seconds": round(elapsed, 2), "requests": len(lat) + len(errors),
            "errors": len(errors), "first_errors": errors[:3], "req_per_s": round(len(lat) / elapsed, 1),
            **percentiles(lat)}


async def jobs_load(url: str, key: str, n: int, timeout: float) -> dict:
    """Submit n jobs at once, then follow them through the job list until all are final."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=n)) as http:
        start = time.perf_counter()

        async def submit(i: int):
            t = time.perf_counter()
            try:
                while True:  # a 429 (the key's ML3_MAX_KEY_WRITES submits in progress) is retried as it says
                    r = await http.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": f"load-{i}"})
                    if r.status_code != 429 or "retry-after" not in r.headers or time.perf_counter() - t > 60:
                        break
                    await asyncio.sleep(float(r.headers["retry-after"]))
            except httpx.HTTPError as e:
                return None, time.perf_counter() - t, f"{type(e).__name__}: {e}"
            ok = r.status_code == 202
            return (r.json()["id"] if ok else None), time.perf_counter() - t, (None if ok else r.text[:200])

        submitted = await asyncio.gather(*(submit(i) for i in range(n)))
        submit_s = time.perf_counter() - start
        ids = {job_id for job_id, _, _ in submitted if job_id is not None}
        errors = [e for _, _, e in submitted if e]
        status: dict[int, str] = {}
        while time.perf_counter() - start < timeout:
            status = {}
            cursor = None
            while True:
                params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                page = (await http.get("/v1/jobs", params=params)).json()
                status.update({j["id"]: j["status"] for j in page["items"] if j["id"] in ids})
                cursor = page["next_cursor"]
                if not cursor:
                    break
            if all(status.get(i) in FINAL for i in ids):
                break
            await asyncio.sleep(0.5)
        all_final_s = time.perf_counter() - start
        versions = (await http.get("/v1/losses/load-jobs")).json().get("version")
    final = [i for i in ids if status.get(i) in FINAL]
    counts = {s: sum(1 for i in ids if status.get(i) == s) for s in ("succeeded", "failed", "canceled")}
    return {"jobs": n, "accepted": len(ids), "submit_errors": len(errors), "first_errors": errors[:3],
            "submit_all_s": round(submit_s, 2), **{f"submit_{k}": v for k, v in
                                                   percentiles([t for _, t, _ in submitted]).items()},
            "final": len(final), "lost": n - len(final), **counts, "loss_versions": versions,
            "all_final_s": round(all_final_s, 1), "jobs_per_s": round(len(final) / all_final_s, 2)}


def record(ev: dict, jobs: dict, load: tuple[float, float]) -> None:
    wrap = lambda text, indent="": textwrap.fill(text, 100, subsequent_indent=indent)  # noqa: E731
    lines = [
        "", f"## Load: {ev['clients']} clients x {ev['seconds']:.0f} s evaluate, {jobs['jobs']} jobs at once "
        "(`bench/load.py`)", "",
        wrap(f"{time.strftime('%Y-%m-%d')}, {platform.machine()} VM with {os.cpu_count()} CPU cores shared "
             f"with other work (load average {load[0]:.1f} before the run, {load[1]:.1f} after); a real "
             "`ml3 serve` (one uvicorn process, SQLite, the embedded runner: one job at a time) with API "
             "keys required; the asyncio + httpx clients run on the same cores."), "",
        "| phase | requests | errors | throughput | p50 | p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| evaluate, POST {ev['points']} points, {ev['clients']} concurrent clients | {ev['requests']} | "
        f"{ev['errors']} | {ev['req_per_s']} req/s | {ev['p50_ms']:.0f} ms | {ev['p99_ms']:.0f} ms |",
        f"| submit {jobs['jobs']} jobs at once | {jobs['jobs']} | {jobs['submit_errors']} | all accepted in "
        f"{jobs['submit_all_s']} s | {jobs['submit_p50_ms']:.0f} ms | {jobs['submit_p99_ms']:.0f} ms |", "",
        wrap(f"- Jobs: {jobs['accepted']} accepted, {jobs['final']} final ({jobs['succeeded']} succeeded, "
             f"{jobs['failed']} failed), {jobs['lost']} lost; {jobs['loss_versions']} loss versions "
             f"registered; all final after {jobs['all_final_s']} s ({jobs['jobs_per_s']} jobs/s: tiny jobs, "
             "one runner, mostly the figures each job draws).", "  "),
        wrap(f"- Latency is queueing: {ev['clients']} clients that always have a request in flight at "
             f"{ev['req_per_s']} req/s wait about {ev['clients'] / max(ev['req_per_s'], 1e-9):.2f} s each "
             "(Little's law); throughput is what the shared cores leave to server and clients.", "  "),
        "", f"`RESULT {json.dumps({'evaluate': ev, 'jobs': jobs})}`",
    ]
    with open(ROOT / "bench" / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--points", type=int, default=8, help="points per evaluate request")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--job-timeout", type=float, default=1800.0, help="seconds for all jobs to end")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    data_dir = Path(tempfile.mkdtemp(prefix="ml3-load-"))
    seed_database(data_dir)
    reads, submit = make_keys(data_dir, args.clients)
    proc, url = start_server(data_dir, ML3_AUTH="on", ML3_RUNNER="local", ML3_POLL_SECONDS="0.1",
                             ML3_MAX_ACTIVE_JOBS=str(max(args.jobs, 1)), ML3_RUNNER_THREADS="1")
    try:
        httpx.post(f"{url}/v1/losses/bench/evaluate", json={"pred": [0.0], "target": [0.0]},
                   headers={"Authorization": f"Bearer {reads[0]}"}, timeout=60)  # warm: load the loss
        ev = {**asyncio.run(evaluate_load(url, reads, args.seconds, args.points)), "points": args.points}
        print(f"evaluate: {ev}", file=sys.stderr)
        jobs = asyncio.run(jobs_load(url, submit, args.jobs, args.job_timeout))
        print(f"jobs: {jobs}", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    if args.record:
        record(ev, jobs, (load_before, os.getloadavg()[0]))
    emit({"evaluate": ev, "jobs": jobs})


if __name__ == "__main__":
    main()
