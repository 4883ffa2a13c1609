"""The interface every robot implements (see the package docstring)."""

from __future__ import annotations

import torch


class Robot:
    name: str = ""
    n_joints: int = 0

    @property
    def joint_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) joint positions, float64 (n,)."""
        raise NotImplementedError

    def mass_matrix(self, q):
        raise NotImplementedError

    def bias_forces(self, q, qd):
        """C(q, q̇)·q̇ + g(q) (+ joint friction where the robot models it)."""
        raise NotImplementedError

    def inverse_dynamics(self, q, qd, qdd):
        return (self.mass_matrix(q) @ qdd.unsqueeze(-1)).squeeze(-1) + self.bias_forces(q, qd)

    def with_payload(self, mass: float) -> Robot:
        raise NotImplementedError
