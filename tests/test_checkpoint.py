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
