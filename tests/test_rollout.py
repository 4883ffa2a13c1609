"""The one inner loop (ml3core.rollout.rollout): every way of training models goes through it."""

import pytest
import torch

from ml3core import make_family
from ml3core.inner import InnerOptimizer
from ml3core.rollout import rollout
from ml3core.sampling import sample_batch

TASK = {"family": "sine", "points": 10, "heldout_points": 4, "model_hidden": [6], "model_activation": "tanh"}


def _batch(n=3):
    family = make_family(TASK)
    theta, data = sample_batch(family, [0, 1], n, dtype=torch.float64)
    return family, theta, data


def _run(family, opt, theta, data, steps, **kw):
    return rollout(family.plain_loss, opt, theta, opt.init(theta), data, steps, **kw)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_each_model_stops_at_its_own_step_count(name):
    """The persistent schedule's warm start: model i takes only its first stop_at[i] steps, and its parameters
    and optimizer state are then those of a run of that many steps alone."""
    family, theta, data = _batch()
    opt = InnerOptimizer(name, 0.05)
    stops = torch.tensor([0, 2, 5])
    got, state = _run(family, opt, theta, data, 5, stop_at=stops)
    for i, n in enumerate(stops.tolist()):
        alone, alone_state = _run(family, opt, {k: v[:, i:i + 1] for k, v in theta.items()},
                                  {k: v[:, i:i + 1] for k, v in data.items()}, n)
        for k in theta:
            torch.testing.assert_close(got[k][:, i:i + 1], alone[k])
        for k in alone_state:
            torch.testing.assert_close(state[k][:, i:i + 1], alone_state[k])
    assert not torch.equal(got["layers.0.weight"][:, 1], got["layers.0.weight"][:, 2])


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_the_differentiable_and_the_in_place_loops_agree(name):
    """The unroll (graph kept) and fit's loop (in place, no graph) are one loop: same models after the same steps."""
    family, theta, data = _batch(2)
    opt = InnerOptimizer(name, 0.02)
    fast, _ = _run(family, opt, theta, data, 4)
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    slow, _ = _run(family, opt, leaves, data, 4, differentiable=True)
    assert all(v.grad_fn is not None for v in slow.values())
    for k in theta:
        torch.testing.assert_close(fast[k], slow[k].detach())
        assert not torch.equal(fast[k], theta[k])  # it trained


def test_on_step_sees_every_step_and_the_start():
    family, theta, data = _batch(1)
    seen = []
    _run(family, InnerOptimizer("sgd", 0.01), theta, data, 3,
         on_step=lambda k, th: seen.append((k, float(family.plain_loss(th, data).sum().detach()))))
    assert [k for k, _ in seen] == [0, 1, 2, 3]
    assert seen[-1][1] < seen[0][1]
