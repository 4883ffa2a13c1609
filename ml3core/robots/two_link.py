"""A planar 2-link arm in a vertical plane (gravity along −y), in closed form.

q1 is measured from the +x axis, q2 relative to link 1. Plain torch: any dtype, any device,
differentiable. The default parameters are those of differentiable-robot-model's 2-link robot
(m = 1, l = 1, lc = 0.5, I = 1e-3), here with gravity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .base import Robot


@dataclass(frozen=True)
class TwoLinkArm(Robot):
    m1: float = 1.0
    m2: float = 1.0
    l1: float = 1.0
    l2: float = 1.0  # only where a payload sits
    lc1: float = 0.5
    lc2: float = 0.5
    I1: float = 1e-3  # about each centre of mass
    I2: float = 1e-3
    g0: float = 9.81
    name = "2link"
    n_joints = 2

    @property
    def joint_limits(self):
        return torch.full((2,), -math.pi, dtype=torch.float64), torch.full((2,), math.pi, dtype=torch.float64)

    def mass_matrix(self, q):
        m2, l1, lc2 = self.m2, self.l1, self.lc2
        c2 = torch.cos(q[..., 1])
        m11 = self.m1 * self.lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * c2) + self.I1 + self.I2
        m12 = m2 * (lc2**2 + l1 * lc2 * c2) + self.I2
        m22 = torch.full_like(m11, m2 * lc2**2 + self.I2)
        return torch.stack([torch.stack([m11, m12], -1), torch.stack([m12, m22], -1)], -2)

    def gravity(self, q):
        c1, c12 = torch.cos(q[..., 0]), torch.cos(q[..., 0] + q[..., 1])
        g2 = self.m2 * self.lc2 * self.g0 * c12
        return torch.stack([(self.m1 * self.lc1 + self.m2 * self.l1) * self.g0 * c1 + g2, g2], -1)

    def potential_energy(self, q):
        s1, s12 = torch.sin(q[..., 0]), torch.sin(q[..., 0] + q[..., 1])
        return self.g0 * (self.m1 * self.lc1 * s1 + self.m2 * (self.l1 * s1 + self.lc2 * s12))

    def bias_forces(self, q, qd):
        h = self.m2 * self.l1 * self.lc2 * torch.sin(q[..., 1])
        qd1, qd2 = qd[..., 0], qd[..., 1]
        coriolis = torch.stack([-h * (2 * qd1 * qd2 + qd2**2), h * qd1**2], -1)
        return coriolis + self.gravity(q)

    def with_payload(self, mass: float) -> TwoLinkArm:
        """A point mass at the tip of link 2: link 2's mass, centre of mass and inertia change."""
        m2 = self.m2 + mass
        lc2 = (self.m2 * self.lc2 + mass * self.l2) / m2
        I2 = self.I2 + self.m2 * (self.lc2 - lc2) ** 2 + mass * (self.l2 - lc2) ** 2
        return replace(self, m2=m2, lc2=lc2, I2=I2)
