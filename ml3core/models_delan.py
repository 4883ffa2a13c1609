"""Inverse-dynamics optimizees with an inertia matrix M_theta(q), as batched parameter dicts.

Deep Lagrangian Network (Lutter et al. 2019): a net over [sin q, cos q] for a lower-triangular
L (positive diagonal through softplus) and a second one for the gravity torques g(q), so that

    M = L·Lᵀ + eps·I,   c = Ṁ·q̇ − ½·[q̇ᵀ (∂M/∂q_k) q̇]_k,   u = M·q̈ + c + g.

The derivatives w.r.t. q are propagated forward through the layers (a Jacobian per point) rather
than by autograd, so the model is an ordinary tensor function of theta: the inner SGD step and
the meta-gradient differentiate it like any other model. Leaves carry leading batch dims
(seeds, tasks) exactly as in ``models.py``.
"""

from __future__ import annotations

import torch

from .models import mlp_forward, mlp_init
from .portable import ACTIVATIONS

DERIVATIVES = {
    "softplus": torch.sigmoid,
    "tanh": lambda a: 1 - torch.tanh(a).square(),
    "relu": lambda a: (a > 0).to(a.dtype),
}


def mlp_forward_jacobian(params: dict, x, tangents, activation: str = "softplus"):
    """An MLP and its directional derivatives: x (..., N, in) and tangents dx/dz_k (..., N, k, in)
    give (out (..., N, out), d out/dz_k (..., N, k, out)). Points and directions share one matmul
    per layer."""
    act, dact = ACTIVATIONS[activation], DERIVATIVES[activation]
    n = sum(1 for k in params if k.endswith(".weight"))
    h, t = x, tangents
    for i in range(n):
        w = params[f"layers.{i}.weight"].mT
        h = h @ w + params[f"layers.{i}.bias"].unsqueeze(-2)
        t = (t.flatten(-3, -2) @ w).unflatten(-2, t.shape[-3:-1])
        if i < n - 1:
            t = dact(h).unsqueeze(-2) * t
            h = act(h)
    return h, t


def tril_selector(n: int, dtype=None, device=None):
    """E (n(n+1)/2, n·n): a vector of [diagonal, strictly-lower entries] times E is L, flattened."""
    rows, cols = torch.tril_indices(n, n, -1)
    idx = torch.cat([torch.arange(n) * (n + 1), rows * n + cols])
    return torch.nn.functional.one_hot(idx, n * n).to(dtype=dtype, device=device)


def delan_init(n: int, hidden: list[int], generators: list, count: int) -> dict:
    """Two nets over [sin q, cos q]: ``inertia`` -> [diag L (n), lower L (n(n-1)/2)] and
    ``gravity`` -> g (n). Separate trunks: a shared one gets dragged by the gravity torques,
    which dominate u, and M then drifts far from the truth under plain SGD. The inertia head
    starts at zero: a random one would couple the big joints into the small ones' torques
    (the iiwa's joint 7 then sees errors of ~100 torque stds)."""
    inertia = mlp_init([2 * n, *hidden, n * (n + 1) // 2], generators, count)
    last = len(hidden)  # zero output layer: L starts at softplus(0)·I, with no couplings and no Coriolis
    inertia[f"layers.{last}.weight"].zero_()
    inertia[f"layers.{last}.bias"].zero_()
    gravity = mlp_init([2 * n, *hidden, n], generators, count)
    return {**{f"inertia.{k}": v for k, v in inertia.items()}, **{f"gravity.{k}": v for k, v in gravity.items()}}


def sub_params(theta: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in theta.items() if k.startswith(prefix + ".")}


def delan_inertia(theta: dict, q, qd, activation: str = "softplus", eps: float = 1e-5, scale=None):
    """(M, c) at (q, q̇), batched like q (..., N, n): M = L·Lᵀ + eps·I, c = Ṁ·q̇ − ½·∂(q̇ᵀMq̇)/∂q.

    ``scale`` (n,) multiplies row i of L by scale_i, i.e. M = T·(L₀L₀ᵀ)·T with T = diag(scale):
    a fixed per-joint unit, so that a fresh net starts near the right order of magnitude on
    every joint (the iiwa's M spans 0.003 to 6)."""
    n = q.shape[-1]
    feats = torch.cat([torch.sin(q), torch.cos(q)], -1)
    dfeats = torch.cat([torch.diag_embed(torch.cos(q)), torch.diag_embed(-torch.sin(q))], -1)  # (.., n, 2n)
    raw, dl = mlp_forward_jacobian(sub_params(theta, "inertia"), feats, dfeats, activation)  # (.., P), (.., n, P)
    l_entries = torch.cat([torch.nn.functional.softplus(raw[..., :n]), raw[..., n:]], -1)
    dl = torch.cat([torch.sigmoid(raw[..., :n]).unsqueeze(-2) * dl[..., :n], dl[..., n:]], -1)  # ∂l/∂q_k
    sel = tril_selector(n, q.dtype, q.device)
    if scale is not None:
        row_scale = sel.unflatten(-1, (n, n)).sum(-1) @ scale.to(q)  # scale_i of each entry's row i
        l_entries, dl = l_entries * row_scale, dl * row_scale
    L = (l_entries @ sel).unflatten(-1, (n, n))
    Ldot = ((qd.unsqueeze(-2) @ dl).squeeze(-2) @ sel).unflatten(-1, (n, n))  # Σ_k ∂L/∂q_k q̇_k
    M = L @ L.mT + eps * torch.eye(n, dtype=q.dtype, device=q.device)
    v = (L.mT @ qd.unsqueeze(-1)).squeeze(-1)  # Lᵀq̇
    mdot_qd = (Ldot @ v.unsqueeze(-1) + L @ (Ldot.mT @ qd.unsqueeze(-1))).squeeze(-1)
    w = (qd.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2) @ sel.mT  # q̇_i v_j at each entry (i, j) of L
    half_dq_kinetic = (dl @ w.unsqueeze(-1)).squeeze(-1)  # ½ ∂/∂q_k (q̇ᵀ M q̇) = q̇ᵀ (∂L/∂q_k) v
    return M, mdot_qd - half_dq_kinetic


def delan_gravity(theta: dict, q, activation: str = "softplus"):
    return mlp_forward(sub_params(theta, "gravity"), torch.cat([torch.sin(q), torch.cos(q)], -1), activation)


def mlp_torque(theta: dict, q, qd, qdd, activation: str = "softplus"):
    """A black-box MLP on [q, q̇, q̈] and its implied inertia ∂û/∂q̈ (which it never has to keep
    symmetric or positive definite)."""
    n = q.shape[-1]
    x = torch.cat([q, qd, qdd], -1)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    tangents = torch.cat([torch.zeros(n, 2 * n, dtype=q.dtype, device=q.device), eye], -1)
    u, du = mlp_forward_jacobian(theta, x, tangents.expand(*x.shape[:-1], n, 3 * n), activation)
    return u, du.mT  # (..., N, n), ∂u_i/∂q̈_j (..., N, n, n)
