"""The allocator setting the CLI and the runner apply: freed tensor memory stays in the heap, so a
training loop that allocates the same sizes every step stops faulting their pages in again."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

LOOP = """
import resource, sys, torch
from ml3core import make_family
from ml3core.rollout import fit
from ml3core.sampling import fresh_theta, sample_data, stream_generator
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    from app.jobs.allocator import keep_freed_memory
    assert keep_freed_memory()
family = make_family({"family": "sine"})
gens = [stream_generator(s, "test") for s in range(5)]
data = sample_data(family, gens, 10, "test", "cpu", torch.float32)
theta = fresh_theta(family, gens, 10, "cpu", torch.float32)
fit(family, family.plain_loss, theta, data, 5, 1e-3, record_at=[5])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fit(family, family.plain_loss, theta, data, 50, 1e-3, record_at=[50])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    # glibc's default raises its mmap threshold by itself after some frees, at a moment that depends on the
    # process's history: a fixed threshold at its initial value (128 KiB) makes "default" the same every run
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", LOOP, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=env)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_page_faults():
    """50 SGD steps of 50 sine models (the meta-test's batch): about 250 page faults per step by
    default, about 10 with the setting."""
    default, tuned = faults("default"), faults("tuned")
    assert default > 50 * 50, default
    assert tuned < default / 5, (default, tuned)
