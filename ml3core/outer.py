"""The outer optimizer: Adam with its own state for each seed.

phi carries a leading seed dim S. One ``torch.optim.Adam`` over the stacked phi shares a step
counter across seeds, and a seed whose gradient is zeroed is still moved by its momentum. Here
every seed has its own moments and step count, and a seed left out of a step keeps its
parameters, moments and step count exactly as they were. For a seed that never skips, the
update is torch's Adam (same formula, bias corrections in float64).
"""

from __future__ import annotations

import torch


class SeedAdam:
    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.int64, device=first.device)  # per seed
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        """One Adam step for the seeds where ``active`` (S,) is true; the others are left untouched."""
        b1, b2 = self.betas
        self.steps += active
        t = self.steps.double()
        bc1, bc2 = 1 - b1**t, 1 - b2**t  # t = 0 (never stepped) only where inactive: masked below
        for k, p in self.params.items():
            g, m, v = grads[k], self.exp_avg[k], self.exp_avg_sq[k]
            shape = (-1,) + (1,) * (p.dim() - 1)
            on = active.view(shape)
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * g * g
            m_hat = m_new / bc1.to(p.dtype).view(shape)
            v_hat = v_new / bc2.to(p.dtype).view(shape)
            p_new = p - self.lr * m_hat / (v_hat.sqrt() + self.eps)
            m.copy_(torch.where(on, m_new, m))
            v.copy_(torch.where(on, v_new, v))
            p.copy_(torch.where(on, p_new, p))

    def state(self) -> dict[str, torch.Tensor]:
        """The optimizer state as flat named tensors (for a checkpoint)."""
        return {"step": self.steps, **{f"exp_avg.{k}": v for k, v in self.exp_avg.items()},
                **{f"exp_avg_sq.{k}": v for k, v in self.exp_avg_sq.items()}}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state`` returned, exactly."""
        self.steps.copy_(state["step"])
        for k in self.params:
            self.exp_avg[k].copy_(state[f"exp_avg.{k}"])
            self.exp_avg_sq[k].copy_(state[f"exp_avg_sq.{k}"])


def from_torch_adam(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """A ``SeedAdam.state`` from a checkpoint of one ``torch.optim.Adam`` over the stacked phi
    (keys ``adam.{idx}.{step,exp_avg,exp_avg_sq}``, idx = position in ``names``): its one step
    count is every seed's. No such keys (saved before the first step): a fresh state."""
    step = int(round(float(tensors["adam.0.step"]))) if "adam.0.step" in tensors else 0
    seeds = tensors[f"phi.{names[0]}"].shape[0]
    state = {"step": torch.full((seeds,), step, dtype=torch.int64)}
    for idx, k in enumerate(names):
        zero = torch.zeros_like(tensors[f"phi.{k}"])
        state[f"exp_avg.{k}"] = tensors.get(f"adam.{idx}.exp_avg", zero)
        state[f"exp_avg_sq.{k}"] = tensors.get(f"adam.{idx}.exp_avg_sq", zero)
    return state
