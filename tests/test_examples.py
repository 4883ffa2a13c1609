"""Every example ends in one line naming what failed, not a traceback, when the server is out of reach; the
loss examples also when the loss they name is not registered (tests/test_service_e2e.py, a real server)."""

import subprocess
import sys

import pytest
from conftest import ROOT, free_port

EXAMPLES = ["downstream_training.py", "classification_downstream.py", "dataset_example.py", "noisy_labels.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_without_a_server_ends_in_one_line(name, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--server", url, "--quick"
                          if name in ("dataset_example.py", "noisy_labels.py") else "--steps=1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith(name.removesuffix(".py") + ": ") and url in lines[0] and "reach" in lines[0]
