"""Stop, checkpoint, resume: the resumed run is the uninterrupted run, bit for bit on CPU."""

import pytest
import torch

from ml3core import ConfigError, Hooks, LossSpec, MetaTrainer, TrainConfig, make_family

TASK = {"family": "sine", "points": 20, "heldout_points": 10, "model_hidden": [16]}


def trainer(train_task="fixed", **kw):
    family = make_family({**TASK, "train_task": train_task})
    spec = LossSpec.from_dict({"hidden": [8, 8]}, **family.loss_defaults())
    cfg = TrainConfig(**{"seeds": 2, "outer_iterations": 30, "eval_every": 5, "eval_steps": 5,
                         "validation_tasks": 3, "tasks_per_batch": 2, "inner_steps": 2, **kw})
    return MetaTrainer(family, spec, cfg)


@pytest.mark.parametrize("train_task", ["fixed", "sampled"])
def test_resume_from_checkpoint_equals_uninterrupted_run(train_task):
    full = trainer(train_task).run()

    saved = []
    first = trainer(train_task)
    stop_at = 13
    part = first.run(Hooks(should_stop=lambda: first.iteration >= stop_at, on_checkpoint=saved.append,
                           checkpoint_every=4))
    assert part.stopped and part.iteration == stop_at
    assert len(saved) == 4  # iterations 4, 8, 12 and the stop

    resumed = trainer(train_task)
    resumed.load_state(saved[-1])
    assert resumed.iteration == stop_at
    rest = resumed.run()
    assert not rest.stopped and rest.iteration == 30
    for k in full.phi:
        assert torch.equal(full.phi[k], rest.phi[k]), k
    assert rest.history == full.history
    assert rest.validation == full.validation


def test_outer_adam_state_round_trips_bit_for_bit():
    """Per-seed moments and step counts (here seed 1 skipped a step) come back exactly."""
    t = trainer()
    for _ in range(3):
        t.step()
    t.opt.steps[1] -= 1  # as after a non-finite step of seed 1
    resumed = trainer()
    resumed.load_state(t.state_bytes())
    assert resumed.opt.steps.tolist() == [3, 2]
    state = resumed.opt.state()
    for k, v in t.opt.state().items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k


def old_checkpoint(t, torch_opt) -> bytes:
    """``t``'s checkpoint as version 1 wrote it: one torch.optim.Adam's state_dict over the stacked phi."""
    import json

    from safetensors.torch import load, save

    from ml3core.checkpoint import safetensors_metadata

    blob = t.state_bytes()
    tensors = {k: v for k, v in load(blob).items() if not k.startswith("outer.")}
    opt = torch_opt.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"adam.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = json.loads(safetensors_metadata(blob)["json"])
    meta.update(version=1, adam_param_groups=opt["param_groups"])
    return save(tensors, metadata={"json": json.dumps(meta)})


def test_a_checkpoint_of_the_shared_torch_adam_still_resumes():
    """Version 1 checkpoints hold one torch Adam's state: its step count becomes every seed's and
    training continues as that Adam would have."""
    t = trainer()
    params = list(t.phi.values())
    torch_opt = torch.optim.Adam(params, lr=t.cfg.outer_lr, fused=True)
    fresh = trainer()
    fresh.load_state(old_checkpoint(t, torch_opt))  # saved before the first step: no Adam state yet
    assert fresh.opt.steps.tolist() == [0, 0] and all(not v.any() for v in fresh.opt.state().values())

    gen = torch.Generator().manual_seed(0)

    def grads():
        return {k: torch.randn(v.shape, generator=gen) for k, v in t.phi.items()}

    for _ in range(3):
        for p, g in zip(params, grads().values(), strict=True):
            p.grad = g
        torch_opt.step()
    resumed = trainer()
    resumed.load_state(old_checkpoint(t, torch_opt))
    assert resumed.opt.steps.tolist() == [3, 3]
    for k, p in t.phi.items():
        assert torch.equal(resumed.phi[k], p.detach())
        assert torch.equal(resumed.opt.exp_avg[k], torch_opt.state[p]["exp_avg"])
        assert torch.equal(resumed.opt.exp_avg_sq[k], torch_opt.state[p]["exp_avg_sq"])
    g = grads()
    resumed.opt.step(g, torch.ones(2, dtype=torch.bool))
    for p, gp in zip(params, g.values(), strict=True):
        p.grad = gp
    torch_opt.step()
    for k, p in t.phi.items():
        assert not torch.equal(resumed.phi[k], fresh.phi[k])
        torch.testing.assert_close(resumed.phi[k], p.detach(), rtol=1e-6, atol=1e-7)


def test_resume_from_an_older_checkpoint_also_matches():
    full = trainer().run()
    saved = []
    t = trainer()
    t.run(Hooks(should_stop=lambda: t.iteration >= 11, on_checkpoint=saved.append, checkpoint_every=4))
    resumed = trainer()
    resumed.load_state(saved[1])  # iteration 8
    assert resumed.iteration == 8
    rest = resumed.run()
    for k in full.phi:
        assert torch.equal(full.phi[k], rest.phi[k])


def test_cancel_stops_within_one_iteration():
    t = trainer(outer_iterations=1000)
    flag = {"stop": False}
    seen = []

    def on_progress(done, total, metrics):
        seen.append(done)
        if done == 7:
            flag["stop"] = True

    saved = []
    result = t.run(Hooks(on_progress=on_progress, should_stop=lambda: flag["stop"], progress_every=1,
                         on_checkpoint=saved.append, checkpoint_every=100))
    assert result.stopped
    assert result.iteration == 7
    assert seen[-1] == 7
    assert len(saved) == 1  # the checkpoint written at the stop
    assert result.validation == {}


def test_checkpoint_of_another_configuration_is_refused():
    saved = []
    t = trainer()
    t.run(Hooks(should_stop=lambda: t.iteration >= 2, on_checkpoint=saved.append))
    other = trainer(inner_lr=0.5)
    with pytest.raises(ConfigError, match="different configuration"):
        other.load_state(saved[-1])
    with pytest.raises(ConfigError, match="unreadable"):
        trainer().load_state(b"not a checkpoint")


def test_more_iterations_may_continue_a_finished_run():
    """outer_iterations is not part of a checkpoint's identity: a user may extend a run."""
    saved = []
    t = trainer(outer_iterations=10)
    t.run(Hooks(should_stop=lambda: t.iteration >= 10, on_checkpoint=saved.append))
    longer = trainer(outer_iterations=20)
    longer.load_state(saved[-1])
    assert longer.run().iteration == 20
