"""A burst of keyed submits against a real ``ml3 serve`` (SQLite or PostgreSQL, ML3_AUTH=on, no job runner), on
loopback only: C clients send ``POST /v1/jobs`` at once with one API key and one Idempotency-Key
while a probe asks ``/healthz`` every 20 ms. Every answer must be 202 (the one job) or 429 (the
key's write slots are taken: Retry-After), exactly one job may exist, and /healthz must stay
fast: its p99 under 1 s (a burst like this once stalled it for 30 s on exhausted database
connections).

Usage: python bench/submit_burst.py [--clients 50] [--rounds 1] [--keys 1] [--postgres URL]
(--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test: the server runs on a fresh database
created beside that one, dropped at the end.)
(--keys K: the clients take turns over K API keys, one Idempotency-Key each, so K jobs a round.)
The last line is `RESULT {json}`; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from evaluate import start_server  # noqa: E402
from machine import emit  # noqa: E402  (bench/machine.py: the RESULT line names its machine)

JOB = {"task": {"family": "sine", "points": 10, "heldout_points": 10}, "preset": "paper", "seeds": 1,
       "outer_iterations": 2, "eval_every": 1, "eval_steps": 2, "validation_tasks": 1,
       "meta_test": {"steps": 2, "tasks": 1, "horizons": [2]}}


@contextlib.contextmanager
def database(postgres: str | None, data_dir: Path):
    """The server's database URL: SQLite in ``data_dir``, or a fresh PostgreSQL database, dropped after."""
    if not postgres:
        yield f"sqlite:///{(data_dir / 'ml3.db').resolve()}"
        return
    admin = sqlalchemy.create_engine(postgres, isolation_level="AUTOCOMMIT")
    name = f"ml3_burst_{os.getpid()}"
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def make_keys(url: str, n: int) -> list[str]:
    from app.db.session import get_sessionmaker, upgrade
    from app.services import security

    upgrade(url)
    with get_sessionmaker(url).begin() as db:
        return [security.create_key(db, "submit", f"burst-{i}")[1] for i in range(n)]


async def burst(url: str, tokens: list[str], clients: int, idempotency_key: str) -> tuple[list, list[float]]:
    """(submit answers as (status, job id, Retry-After), /healthz latencies during the burst)."""
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        done = asyncio.Event()
        probes: list[float] = []

        async def probe():
            while not done.is_set():
                t = time.perf_counter()
                await client.get("/healthz")
                probes.append(time.perf_counter() - t)
                await asyncio.sleep(0.02)

        async def submit(i: int):
            headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Idempotency-Key": idempotency_key}
            r = await client.post("/v1/jobs", json=JOB, headers=headers)
            job_id = r.json().get("id") if r.status_code == 202 else None
            return r.status_code, job_id, r.headers.get("retry-after")

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.2)
        answers = await asyncio.gather(*(submit(i) for i in range(clients)))
        await asyncio.sleep(0.2)
        done.set()
        await prober
    return answers, probes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1, help="bursts, each with its own Idempotency-Key")
    p.add_argument("--keys", type=int, default=1, help="API keys the clients take turns over")
    p.add_argument("--postgres", help="a PostgreSQL URL: burst a server on a fresh database beside it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.postgres, Path(tmp)) as db_url:
        data_dir = Path(tmp)
        tokens = make_keys(db_url, args.keys)
        proc, url = start_server(data_dir, ML3_AUTH="on", ML3_HOST="127.0.0.1", ML3_DATABASE_URL=db_url)
        try:
            answers, probes = [], []
            for i in range(args.rounds):
                a, h = asyncio.run(burst(url, tokens, args.clients, f"burst-{i}"))
                answers += a
                probes += h
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        engine = sqlalchemy.create_engine(db_url)
        with engine.connect() as db:
            jobs = db.execute(sqlalchemy.text("SELECT count(*) FROM jobs")).scalar_one()
        engine.dispose()
    codes = Counter(code for code, _, _ in answers)
    ids = {job_id for code, job_id, _ in answers if code == 202}
    probes.sort()
    result = {"database": "postgresql" if args.postgres else "sqlite", "clients": args.clients,
              "rounds": args.rounds, "keys": args.keys, "codes": dict(codes),
              "job_ids": sorted(ids), "jobs": jobs,
              "retry_after": sorted({ra for code, _, ra in answers if code == 429}),
              "healthz": {"n": len(probes), "p50_s": round(statistics.median(probes), 4),
                          "p99_s": round(probes[int(0.99 * (len(probes) - 1))], 4), "max_s": round(probes[-1], 4)}}
    failed = [name for name, ok in (
        ("every answer is 202 or 429", set(codes) <= {202, 429}),
        ("one job per key and Idempotency-Key", len(ids) == jobs == args.rounds * args.keys),
        ("every 429 says Retry-After", all(ra for code, _, ra in answers if code == 429)),
        ("/healthz p99 under 1 s", result["healthz"]["p99_s"] < 1.0)) if not ok]
    result["failed"] = failed
    emit(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
