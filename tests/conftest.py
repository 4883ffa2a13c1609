import os

import pytest
import torch

# On 2 cores, two torch threads can make a tiny step 100x slower.
torch.set_num_threads(1)


def require_service(name: str, reason: str):
    """Skip with a clear reason on a user's machine; fail in CI (ML3_REQUIRE_SERVICES=1)."""
    if os.environ.get("ML3_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required in CI but unavailable: {reason}")
    pytest.skip(f"{name} unavailable ({reason}); integration test skipped")
