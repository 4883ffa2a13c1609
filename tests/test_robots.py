"""Robot dynamics: the closed-form 2-link arm against autograd identities of its own Lagrangian,
and the KUKA iiwa (differentiable-robot-model, float32) against Pinocchio in float64."""

import importlib.util
import os

import pytest
import torch
from conftest import require_service

from ml3core.robots import make_robot
from ml3core.robots.two_link import TwoLinkArm

ARM = TwoLinkArm()


def random_states(n, count, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(count, n, generator=g, dtype=dtype) * 2 - 1) * s for s in (3.0, 2.0, 5.0)]


def link_kinematics(arm, q):
    """Centre-of-mass positions (x, y) and absolute link angles, written from the geometry alone."""
    a1, a12 = q[0], q[0] + q[1]
    p1 = torch.stack([arm.lc1 * torch.cos(a1), arm.lc1 * torch.sin(a1)])
    p2 = torch.stack([arm.l1 * torch.cos(a1) + arm.lc2 * torch.cos(a12),
                      arm.l1 * torch.sin(a1) + arm.lc2 * torch.sin(a12)])
    return p1, p2, torch.stack([a1, a12])


def kinetic_mass_matrix(arm, q):
    """M = Σ m·JvᵀJv + I·JωᵀJω from autograd Jacobians of the centres of mass."""
    jac = torch.autograd.functional.jacobian(lambda q: link_kinematics(arm, q), q)
    (j1, j2, jw) = jac
    return arm.m1 * j1.T @ j1 + arm.m2 * j2.T @ j2 + arm.I1 * jw[:1].T @ jw[:1] + arm.I2 * jw[1:].T @ jw[1:]


def test_two_link_mass_matrix_is_the_kinetic_energy_of_the_links():
    q, _, _ = random_states(2, 16, 0)
    M = ARM.mass_matrix(q)
    expected = torch.stack([kinetic_mass_matrix(ARM, qi) for qi in q])
    torch.testing.assert_close(M, expected, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(M).min() > 0


def test_two_link_gravity_is_the_gradient_of_the_potential():
    q, _, _ = random_states(2, 16, 1)

    def potential(q):  # height of each centre of mass times its weight (gravity along −y)
        p1, p2, _ = link_kinematics(ARM, q)
        return ARM.g0 * (ARM.m1 * p1[1] + ARM.m2 * p2[1])

    expected = torch.stack([torch.autograd.functional.jacobian(potential, qi) for qi in q])
    torch.testing.assert_close(ARM.gravity(q), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ARM.bias_forces(q, torch.zeros_like(q)), expected, rtol=1e-12, atol=1e-12)


def test_two_link_coriolis_from_christoffel_symbols_of_m():
    q, qd, qdd = random_states(2, 16, 2)
    for qi, qdi, qddi in zip(q, qd, qdd, strict=True):
        dM = torch.autograd.functional.jacobian(ARM.mass_matrix, qi)  # dM[i, j, k] = ∂M_ij/∂q_k
        christoffel = 0.5 * (dM + dM.permute(0, 2, 1) - dM.permute(2, 0, 1))  # Γ_ijk
        coriolis = torch.einsum("ijk,j,k->i", christoffel, qdi, qdi)
        torch.testing.assert_close(ARM.bias_forces(qi, qdi) - ARM.gravity(qi), coriolis, rtol=1e-10, atol=1e-12)
        u = ARM.mass_matrix(qi) @ qddi + coriolis + ARM.gravity(qi)
        torch.testing.assert_close(ARM.inverse_dynamics(qi, qdi, qddi), u, rtol=1e-12, atol=1e-12)


def test_two_link_payload_is_a_point_mass_at_the_tip():
    q, qd, qdd = random_states(2, 8, 3)
    payload = 0.7
    heavy = ARM.with_payload(payload)
    for qi, qdi, qddi in zip(q, qd, qdd, strict=True):
        tip = lambda q: torch.stack([ARM.l1 * torch.cos(q[0]) + ARM.l2 * torch.cos(q[0] + q[1]),  # noqa: E731
                                     ARM.l1 * torch.sin(q[0]) + ARM.l2 * torch.sin(q[0] + q[1])])
        jt = torch.autograd.functional.jacobian(tip, qi)
        torch.testing.assert_close(heavy.mass_matrix(qi), ARM.mass_matrix(qi) + payload * jt.T @ jt)
        torch.testing.assert_close(heavy.gravity(qi), ARM.gravity(qi) + payload * ARM.g0 * jt[1])
        u = heavy.inverse_dynamics(qi, qdi, qddi)
        assert not torch.allclose(u, ARM.inverse_dynamics(qi, qdi, qddi))


def test_two_link_any_dtype_and_leading_dims():
    q, qd, qdd = random_states(2, 12, 4)
    u64 = ARM.inverse_dynamics(q, qd, qdd)
    u32 = ARM.inverse_dynamics(*(t.float().view(3, 4, 2) for t in (q, qd, qdd)))
    assert u32.dtype == torch.float32 and u32.shape == (3, 4, 2)
    torch.testing.assert_close(u32.reshape(12, 2).double(), u64, rtol=1e-5, atol=1e-4)
    assert ARM.mass_matrix(q.view(3, 4, 2)).shape == (3, 4, 2, 2)
    lower, upper = ARM.joint_limits
    assert ARM.n_joints == 2 and (lower < upper).all()


# -- KUKA iiwa against Pinocchio ------------------------------------------------------------------
def iiwa_or_skip():
    from ml3core.robots.iiwa import INSTALL, available

    if not available():  # CI installs both: a broken install fails there instead of skipping
        require_service("differentiable-robot-model", INSTALL)
    if importlib.util.find_spec("pinocchio") is None:
        require_service("pinocchio", "the float64 reference needs it: pip install pin")
    return make_robot("iiwa")


def pinocchio_model(payload=0.0):
    import diff_robot_data
    import numpy as np
    import pinocchio as pin

    model = pin.buildModelFromUrdf(os.path.join(diff_robot_data.__path__[0], "kuka_iiwa/urdf/iiwa7.urdf"))
    if payload:  # a point mass at the flange, 0.045 m along link 7's z axis
        model.inertias[7] = model.inertias[7] + pin.Inertia(payload, np.array([0, 0, 0.045]), np.zeros((3, 3)))
    return model


def pinocchio_dynamics(model, q, qd, qdd):
    import numpy as np
    import pinocchio as pin

    data = model.createData()
    Ms, bs, us = [], [], []
    for qi, qdi, qddi in zip(q.numpy(), qd.numpy(), qdd.numpy(), strict=True):
        M = pin.crba(model, data, qi)
        Ms.append(np.triu(M) + np.triu(M, 1).T)
        bs.append(pin.nonLinearEffects(model, data, qi, qdi).copy())
        us.append(pin.rnea(model, data, qi, qdi, qddi).copy())
    return [torch.tensor(np.stack(a)) for a in (Ms, bs, us)]


def assert_close_per_joint(actual, expected, rel):
    """Each joint (column) to ``rel`` of that joint's own scale: joint 7's torques are ~1000x
    smaller than joint 2's, and a tolerance set by joint 2 would not see them."""
    scale = expected.abs().amax(0, keepdim=True)
    err = (actual.double() - expected).abs()
    assert (err <= rel * scale + 1e-9).all(), f"max relative error {(err / scale).max():.2e}"


@pytest.mark.parametrize("payload", [0.0, 1.5])
def test_iiwa_matches_pinocchio_float64(payload):
    robot = iiwa_or_skip().with_payload(payload)
    lower, upper = robot.joint_limits
    g = torch.Generator().manual_seed(5)
    q = lower + (upper - lower) * torch.rand(32, 7, generator=g, dtype=torch.float64)
    qd = torch.randn(32, 7, generator=g, dtype=torch.float64)
    qdd = 3 * torch.randn(32, 7, generator=g, dtype=torch.float64)
    M_ref, bias_ref, u_ref = pinocchio_dynamics(pinocchio_model(payload), q, qd, qdd)
    M = robot.mass_matrix(q)
    assert M.dtype == torch.float64 and M.shape == (32, 7, 7)
    d = M_ref.diagonal(dim1=-2, dim2=-1).sqrt()
    entry_err = (M - M_ref).abs() / (d.unsqueeze(-1) * d.unsqueeze(-2))  # per-entry relative to √(Mii·Mjj)
    assert entry_err.max() < 1e-4, f"{entry_err.max():.2e}"
    assert_close_per_joint(robot.bias_forces(q, qd), bias_ref, 1e-4)
    assert_close_per_joint(robot.inverse_dynamics(q, qd, qdd), u_ref, 1e-4)


def test_iiwa_damping_is_off_unless_asked_for():
    from ml3core.robots.iiwa import KukaIiwa

    robot = iiwa_or_skip()
    q, qd, qdd = (torch.randn(4, 7, dtype=torch.float64) for _ in range(3))
    damped = KukaIiwa(damping=True).inverse_dynamics(q, qd, qdd)
    torch.testing.assert_close(damped - robot.inverse_dynamics(q, qd, qdd), 0.5 * qd, rtol=1e-4, atol=1e-4)
