"""The 7-DOF KUKA iiwa through differentiable-robot-model (the ``robots`` extra).

That package computes batched, differentiable recursive Newton-Euler dynamics in float32;
inputs of any dtype and leading dims are flattened, cast and cast back. Joint damping
(0.5·q̇ in its URDF) is off by default: the learned models here have no friction term, and
torques from damping would be an error the inertia prior can do nothing about.
A payload is a point mass at the flange (the URDF's massless ``iiwa_link_ee``).
"""

from __future__ import annotations

import contextlib
import functools
import io

import torch

from .base import Robot

INSTALL = ("pip install --no-deps differentiable-robot-model==0.2.3 urdf-parser-py "
           "&& pip install numpy pyyaml lxml")


def available() -> bool:
    try:
        _model()
    except ImportError:
        return False
    return True


@functools.cache
def _model():
    """The parsed URDF, built once per process (urdf_parser_py's warnings about tags
    it does not know, like <material> in collisions, are silenced)."""
    try:
        from differentiable_robot_model.robot_model import DifferentiableKUKAiiwa
        from urdf_parser_py.xml_reflection import core
    except ImportError as e:
        raise ImportError(f"the iiwa needs differentiable-robot-model: {INSTALL}") from e
    on_error, core.on_error = core.on_error, lambda message: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return DifferentiableKUKAiiwa()
    finally:
        core.on_error = on_error


class KukaIiwa(Robot):
    name = "iiwa"
    n_joints = 7

    def __init__(self, payload: float = 0.0, damping: bool = False):
        self.payload, self.damping = float(payload), damping
        self.model = _model()
        self._flange = self.model._bodies[self.model._name_to_idx_map["iiwa_link_ee"]]

    @property
    def joint_limits(self):
        limits = self.model.get_joint_limits()
        return (torch.tensor([lim["lower"] for lim in limits], dtype=torch.float64),
                torch.tensor([lim["upper"] for lim in limits], dtype=torch.float64))

    def with_payload(self, mass: float) -> KukaIiwa:
        return KukaIiwa(self.payload + mass, self.damping)

    def _rnea(self, q, qd, qdd, gravity=True):
        """u for (q, q̇, q̈) of shape (..., 7), in the inputs' dtype; this robot's payload."""
        shape, dtype = q.shape, q.dtype
        flat = [t.reshape(-1, 7).to(torch.float32) for t in (q, qd, qdd)]
        mass = torch.tensor([self.payload])
        self._flange.inertia.mass = lambda: mass  # the shared model carries this robot's payload
        u = self.model.compute_inverse_dynamics(*flat, include_gravity=gravity, use_damping=self.damping)
        return u.reshape(shape).to(dtype)

    def mass_matrix(self, q):
        """Column j is the torque for q̈ = e_j at rest without gravity: one batched RNEA call."""
        eye = torch.eye(7, dtype=q.dtype, device=q.device)
        qs = q.unsqueeze(-2).expand(*q.shape[:-1], 7, 7)
        cols = self._rnea(qs, torch.zeros_like(qs), eye.expand_as(qs), gravity=False)  # (..., j, i)
        return cols.mT

    def bias_forces(self, q, qd):
        return self._rnea(q, qd, torch.zeros_like(q))

    def inverse_dynamics(self, q, qd, qdd):
        return self._rnea(q, qd, qdd)
