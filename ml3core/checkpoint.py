"""A meta-training run as bytes: everything needed to continue it bit-for-bit.

phi, the outer Adam's per-seed state, every seed's RNG state, the fixed train tasks, the
persistent population and the history, in one safetensors blob whose metadata names the run's
identity (family, task, loss and train settings): a checkpoint resumes only the run it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import ConfigError
from .outer import from_torch_adam
from .sampling import to
from .train_config import LATER_DEFAULTS, LATER_LOSS_DEFAULTS, LATER_TASK_DEFAULTS

FORMAT, VERSION = "ml3-checkpoint", 2  # version 1 held one torch Adam's state (one step count for all seeds)


def identity(trainer) -> dict:
    """The settings a checkpoint belongs to; fields added later are left out at their old values."""
    train = {k: v for k, v in asdict(trainer.cfg).items()
             if k not in ("outer_iterations", "device") and LATER_DEFAULTS.get(k, ...) != v}
    later = LATER_TASK_DEFAULTS.get(trainer.family.name, {})
    task = {k: v for k, v in asdict(trainer.family.config).items() if later.get(k, ...) != v}
    loss = {k: v for k, v in trainer.spec.to_dict().items() if LATER_LOSS_DEFAULTS.get(k, ...) != v}
    return {"family": trainer.family.name, "task": task, "loss": loss, "train": train}


def state_bytes(trainer) -> bytes:
    tensors = {f"phi.{k}": v.detach().cpu().contiguous() for k, v in trainer.phi.items()}
    tensors.update({f"outer.{k}": v.cpu().contiguous() for k, v in trainer.opt.state().items()})
    for i, g in enumerate(trainer.gens):
        tensors[f"rng.{i}"] = g.get_state()
    if trainer.fixed is not None:
        tensors.update({f"fixed.{k}": v.cpu().contiguous() for k, v in trainer.fixed.items()})
    if trainer.population is not None:
        for part in ("theta", "state", "data"):
            tensors.update({f"pop.{part}.{k}": v.cpu().contiguous() for k, v in trainer.population[part].items()})
        tensors["pop.age"] = trainer.population["age"].contiguous()
    meta = {"format": FORMAT, "version": VERSION, "iteration": trainer.iteration,
            "identity": identity(trainer), "history": trainer.history}
    return st_save(tensors, metadata={"json": json.dumps(meta)})


def load_state(trainer, blob: bytes) -> None:
    """Put the state of ``blob`` into ``trainer``; a ConfigError when it belongs to another run."""
    try:
        tensors = st_load(blob)
        meta = json.loads(safetensors_metadata(blob)["json"])
    except Exception as e:
        raise ConfigError("checkpoint", f"unreadable checkpoint: {e}") from e
    if meta.get("identity") != json.loads(json.dumps(identity(trainer))):
        raise ConfigError("checkpoint", "checkpoint belongs to a different configuration")
    with_prefix = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
    for k, v in trainer.phi.items():
        v.data.copy_(tensors[f"phi.{k}"])
    trainer.opt.load(with_prefix("outer.") or from_torch_adam(tensors, list(trainer.phi)))
    for i, g in enumerate(trainer.gens):
        g.set_state(tensors[f"rng.{i}"])
    if trainer.fixed is not None:
        trainer.fixed = to(with_prefix("fixed."), trainer.device, trainer.dtype)
        trainer.setup_eval()
    if trainer.population is not None:
        pop = {part: to(with_prefix(f"pop.{part}."), trainer.device, trainer.dtype)
               for part in ("theta", "state", "data")}
        trainer.population = {**pop, "age": tensors["pop.age"]}
    trainer.iteration = meta["iteration"]
    trainer.history = meta["history"]


def checkpoint_iteration(blob: bytes) -> int:
    """The iteration a checkpoint was taken at, read from its header alone."""
    return json.loads(safetensors_metadata(blob)["json"])["iteration"]


def safetensors_metadata(blob: bytes) -> dict:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {})
