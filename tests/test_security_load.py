"""A short run of bench/load.py against a real ``ml3 serve`` with keys required: 10 clients
evaluating for 5 s without a single error, then 20 jobs submitted at once that all end
succeeded, each registering exactly one loss version (none lost, none twice)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_short_load_run_loses_nothing():
    r = subprocess.run([sys.executable, "bench/load.py", "--clients", "10", "--seconds", "5", "--jobs", "20",
                        "--job-timeout", "600"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    ev, jobs = result["evaluate"], result["jobs"]
    assert ev["requests"] > 10 and ev["errors"] == 0, ev
    assert (jobs["accepted"], jobs["final"], jobs["lost"], jobs["submit_errors"]) == (20, 20, 0, 0), jobs
    assert jobs["succeeded"] == 20 and jobs["loss_versions"] == 20, jobs
