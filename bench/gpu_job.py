"""A `device: cuda` job through the service, end to end: `ml3 serve` with the Celery runner, a real
`ml3 worker --queues gpu`, PostgreSQL and Redis; the job must succeed, register its loss, and the
registered loss must answer evaluate. The last line is `RESULT {json}`.

    python bench/gpu_job.py [--device cuda] [--database-url postgresql+psycopg://...]

The database is --database-url (a fresh PostgreSQL database), else SQLite in a temporary folder;
the broker is a private redis-server when one is installed. Where none is, the job goes through
the embedded runner instead, and the RESULT says so ("stack").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from machine import emit  # bench/machine.py: the RESULT line names its machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = {"task": {"family": "sine"}, "preset": "paper", "seeds": 4, "outer_iterations": 100, "eval_every": 50,
        "meta_test": {"tasks": 4, "steps": 100, "horizons": [100, 1000]}, "register_as": "gpu-check"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait(what: str, check, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--database-url", default=os.environ.get("ML3_GPU_CHECK_DATABASE_URL", ""))
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ml3-gpu-job-")
    procs, result = [], {"device": args.device}
    try:
        env = {**os.environ, "ML3_DATA_DIR": tmp, "ML3_RUNNER_THREADS": "1", "ML3_PROGRESS_EVERY": "10",
               "ML3_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/ml3.db"}
        redis = shutil.which("redis-server")
        if redis:
            port = free_port()
            procs.append(subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                                          start_new_session=True))
            env.update(ML3_RUNNER="celery", ML3_BROKER_URL=f"redis://127.0.0.1:{port}/0")
        else:
            env["ML3_RUNNER"] = "local"
        result["stack"] = ("postgresql" if args.database_url.startswith("postgresql") else "sqlite") + \
            (" + redis + a celery worker" if redis else " + embedded runner (no redis-server here)")
        api_port = free_port()
        url = f"http://127.0.0.1:{api_port}"
        log = open(os.path.join(tmp, "server.log"), "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(api_port),
                                       "--log-level", "warning"], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait("the server to answer /readyz", lambda: http("GET", f"{url}/readyz"), 120)
        if redis:
            wlog = open(os.path.join(tmp, "worker.log"), "ab")
            queue = "gpu" if args.device.startswith("cuda") else "cpu"  # what the API routes the job to
            procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", queue], env=env,
                                          cwd=ROOT, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True))
        t = time.perf_counter()
        job = http("POST", f"{url}/v1/jobs", {**SPEC, "device": args.device})
        final = wait("the job to end", lambda: (j := http("GET", f"{url}/v1/jobs/{job['id']}"))["status"]
                     in ("succeeded", "failed", "canceled") and j, args.timeout)
        result.update(job_s=round(time.perf_counter() - t, 1), status=final["status"],
                      error=final.get("error"), loss=(final.get("result") or {}).get("loss"))
        if final["status"] == "succeeded":
            out = http("POST", f"{url}/v1/losses/{result['loss']}/evaluate", {"pred": [0.0, 0.5], "target": [0.0, 1.0]})
            result["evaluate"] = out
        result["ok"] = final["status"] == "succeeded" and "evaluate" in result
    except Exception as e:  # the RESULT line says what broke, the logs stay in tmp
        result.update(ok=False, error=f"{type(e).__name__}: {e}", logs=tmp)
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    emit(result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
