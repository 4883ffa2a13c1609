"""Inner optimizers: one differentiable update rule for meta-training, meta-test and downstream use.

Parameters are dicts of tensors with leading batch dims (seeds, models); so is the optimizer state.
``step`` is out of place and built from differentiable ops, so the meta-gradient flows through
every update of an unroll (also through momentum buffers and Adam moments). The same rule trains
the models of a meta-test and the ones in the examples, so a loss is judged with the optimizer it
was meta-trained for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import check, check_range

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class InnerOptimizer:
    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # heavy-ball momentum ("momentum")
    beta1: float = 0.9  # Adam's moment decays
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        check(self.name in OPTIMIZERS, "inner_optimizer", f"one of {OPTIMIZERS}")
        check_range(self.lr, "inner_lr", 0, 1e3)
        check_range(self.momentum, "inner_momentum", 0, 0.9999)
        check_range(self.beta1, "inner_betas", 0, 0.9999)
        check_range(self.beta2, "inner_betas", 0, 0.999999)

    def to_dict(self) -> dict:
        """How the bundle records it (what the loader's user should train with)."""
        out = {"name": self.name, "lr": self.lr}
        if self.name == "momentum":
            out["momentum"] = self.momentum
        if self.name == "adam":
            out.update(betas=[self.beta1, self.beta2], eps=self.eps)
        return out

    def init(self, theta: dict) -> dict:
        """Zero state for models ``theta`` (leaves (S, T, ...)); SGD has none."""
        if self.name == "sgd":
            return {}
        state = {f"m.{k}": torch.zeros_like(v) for k, v in theta.items()}
        if self.name == "adam":
            state.update({f"v.{k}": torch.zeros_like(v) for k, v in theta.items()})
            leaf = next(iter(theta.values()))
            state["t"] = torch.zeros(leaf.shape[:2], dtype=leaf.dtype, device=leaf.device)  # per model
        return state

    def step(self, theta: dict, grads: dict, state: dict, lr=None) -> tuple[dict, dict]:
        """One update of every model; returns (theta, state), new tensors, differentiable.
        ``lr``: this optimizer's lr (None), or one lr per model, a tensor of the models' leading
        dims (S, T): an lr grid then trains as one batch."""
        lr = self.lr if lr is None else lr
        if self.name == "sgd":
            return {k: v - per_model(lr, v) * grads[k] for k, v in theta.items()}, state
        if self.name == "momentum":
            m = {k: self.momentum * state[f"m.{k}"] + grads[k] for k in theta}
            return {k: v - per_model(lr, v) * m[k] for k, v in theta.items()}, {f"m.{k}": m[k] for k in theta}
        t = state["t"] + 1  # (S, T): models restart at different times
        new = {"t": t}
        out = {}
        for k, v in theta.items():
            g = grads[k]
            m = self.beta1 * state[f"m.{k}"] + (1 - self.beta1) * g
            s = self.beta2 * state[f"v.{k}"] + (1 - self.beta2) * g * g
            tt = t.view(*t.shape, *[1] * (v.dim() - t.dim()))
            m_hat, s_hat = m / (1 - self.beta1**tt), s / (1 - self.beta2**tt)
            # eps inside the root: sqrt has an infinite derivative at 0, where a gradient is exactly 0
            out[k] = v - per_model(lr, v) * m_hat / (s_hat + self.eps**2).sqrt()
            new[f"m.{k}"], new[f"v.{k}"] = m, s
        return out, {k: new[k] for k in state}  # the state's own key order


def per_model(lr, v):
    """A number as it is; a tensor of the models' leading dims (S, T) shaped to broadcast over ``v``."""
    return lr.view(*lr.shape, *[1] * (v.dim() - lr.dim())) if torch.is_tensor(lr) else lr


def from_training(training: dict) -> InnerOptimizer:
    """The inner optimizer a bundle's ``training`` block records (SGD for bundles that predate the field)."""
    betas = training.get("inner_betas", [0.9, 0.999])
    return InnerOptimizer(training.get("inner_optimizer", "sgd"), training.get("inner_lr", 1e-3),
                          training.get("inner_momentum", 0.9), *betas)


def restart(state: dict, fresh: dict, mask) -> dict:
    """``state`` with the models where ``mask`` (S, T) is set replaced by ``fresh``'s."""
    out = {}
    for k, v in state.items():
        mm = mask.view(*mask.shape, *[1] * (v.dim() - mask.dim()))
        out[k] = torch.where(mm, fresh[k], v)
    return out
