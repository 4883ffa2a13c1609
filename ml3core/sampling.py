"""Where a run's randomness, models and tasks come from: one generator per seed and stream.

Every tree is a dict of tensors whose leading dims are (seeds, tasks). Seed s of any run draws
from its own generators, so seed s of a 5-seed run is seed s of a 1-seed run, and evaluating or
testing (their own streams) never perturbs training.
"""

from __future__ import annotations

import torch

from .losses import LossSpec, apply_loss
from .tasks import TaskFamily

STREAMS = {"eval": 1, "validation": 2, "test": 3}


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A generator for one named stream of one seed, independent of the training stream."""
    if stream == "train":
        return torch.Generator().manual_seed(seed)  # seed s of any run is plain manual_seed(s)
    return torch.Generator().manual_seed(2**32 + 16 * seed + STREAMS[stream])


def sample_data(family: TaskFamily, gens: list, n: int, split: str, device, dtype) -> dict:
    """n tasks of ``split`` per seed generator, stacked to (S, n, ...)."""
    return to(family.sample_tasks(gens, n, split), device, dtype)


def fresh_theta(family: TaskFamily, gens: list, n: int, device, dtype) -> dict:
    """n freshly initialised models per seed generator, stacked to (S, n, ...)."""
    return to(family.init_theta(gens, n), device, dtype)


def sample_batch(family: TaskFamily, seed_ids: list[int], n: int, split: str = "test", stream: str = "test",
                 device="cpu", dtype=torch.float32) -> tuple[dict, dict]:
    """(theta, data): n fresh models and n tasks of ``split`` per seed, from each seed's ``stream``."""
    gens = [stream_generator(s, stream) for s in seed_ids]
    data = sample_data(family, gens, n, split, device, dtype)
    return fresh_theta(family, gens, n, device, dtype), data


def to(tree: dict, device, dtype) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in tree.items()}


def learned_objective(family: TaskFamily, spec: LossSpec, phi: dict):
    """theta -> L_phi on the train points. phi may be stacked per seed (S, ...) against data (S, n, ...)."""

    def objective(theta, data):
        pred, target, x = family.loss_inputs(theta, data)
        return apply_loss(spec, phi, pred, target, x)

    return objective


def broadcast_seeds(phi: dict) -> dict:
    """(S, ...) -> (S, 1, ...): one loss per seed, shared by that seed's tasks."""
    return {k: v.unsqueeze(1) for k, v in phi.items()}


def cat_tasks(sets: list[tuple[dict, dict]]):
    """(theta, data) pairs joined along the tasks dim (1), or None where any tensor differs in more."""
    joined = tuple(_cat_trees([pair[i] for pair in sets]) for i in (0, 1))
    return None if None in joined else joined


def _cat_trees(trees: list[dict]) -> dict | None:
    if any(t.keys() != trees[0].keys() for t in trees):
        return None
    out = {}
    for k, v in trees[0].items():
        vs = [t[k] for t in trees]
        if any(x.dim() < 2 or x.dtype != v.dtype or x.shape[:1] + x.shape[2:] != v.shape[:1] + v.shape[2:]
               for x in vs):
            return None
        out[k] = torch.cat(vs, dim=1)
    return out
