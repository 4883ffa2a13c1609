"""Robots for inverse-dynamics tasks: u = M(q)·q̈ + C(q, q̇)·q̇ + g(q).

One small interface for every robot, batched over leading dims: joint tensors are (..., n),
mass matrices (..., n, n). ``with_payload(kg)`` gives the same robot carrying a point mass at
the end of its last link (a payload changes M, so tasks can differ in it).
"""

from __future__ import annotations

from .base import Robot


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
