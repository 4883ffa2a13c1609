"""Robots for inverse-dynamics tasks: u = M(q)·q̈ + C(q, q̇)·q̇ + g(q).

One small interface for every robot, batched over leading dims: joint tensors are (..., n),
mass matrices (..., n, n). ``with_payload(kg)`` gives the same robot carrying a point mass at
the end of its last link (a payload changes M, so tasks can differ in it).
"""

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


def make_robot(name: str, payload: float = 0.0) -> Robot:
    """A robot by name: '2link' (closed form) or 'iiwa' (needs the ``robots`` extra)."""
    if name == "2link":
        from .two_link import TwoLinkArm

        robot = TwoLinkArm()
    elif name == "iiwa":
        from .iiwa import KukaIiwa

        robot = KukaIiwa()
    else:
        raise ValueError(f"unknown robot {name!r}; one of {ROBOTS}")
    return robot.with_payload(payload) if payload else robot


ROBOTS = ("2link", "iiwa")
JOINTS = {"2link": 2, "iiwa": 7}

__all__ = ["JOINTS", "ROBOTS", "Robot", "make_robot"]
