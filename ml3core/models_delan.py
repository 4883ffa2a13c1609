"""Inverse-dynamics optimizees with an inertia matrix M_theta(q), as batched parameter dicts.

Deep Lagrangian Network (Lutter et al. 2019): a trunk over [sin q, cos q] with heads for a
lower-triangular L (positive diagonal through softplus) and a potential V, so that

    M = L·Lᵀ + eps·I,   c = Ṁ·q̇ − ½·[q̇ᵀ (∂M/∂q_k) q̇]_k,   g = ∂V/∂q,   u = M·q̈ + c + g.

The derivatives w.r.t. q are propagated forward through the layers (a Jacobian per point) rather
than by autograd, so the model is an ordinary tensor function of theta: the inner SGD step and
the meta-gradient differentiate it like any other model. Leaves carry leading batch dims
(seeds, tasks) exactly as in ``models.py``.
"""

from __future__ import annotations

import torch

from .models import mlp_init
from .portable import ACTIVATIONS

DERIVATIVES = {
    "softplus": torch.sigmoid,
    "tanh": lambda a: 1 - torch.tanh(a).square(),
    "relu": lambda a: (a > 0).to(a.dtype),
}


def mlp_forward_jacobian(params: dict, x, jx, activation: str = "softplus"):
    """An MLP and its Jacobian: x (..., N, in) with jx = dx/dz (..., N, in, k) gives
    (out (..., N, out), d out/dz (..., N, out, k))."""
    act, dact = ACTIVATIONS[activation], DERIVATIVES[activation]
    n = sum(1 for k in params if k.endswith(".weight"))
    h, j = x, jx
    for i in range(n):
        w = params[f"layers.{i}.weight"]
        h = h @ w.mT + params[f"layers.{i}.bias"].unsqueeze(-2)
        j = w.unsqueeze(-3) @ j
        if i < n - 1:
            j = dact(h).unsqueeze(-1) * j
            h = act(h)
    return h, j


def tril_selector(n: int, dtype=None, device=None):
    """E (n(n+1)/2, n·n): a vector of [diagonal, strictly-lower entries] times E is L, flattened."""
    rows, cols = torch.tril_indices(n, n, -1)
    idx = torch.cat([torch.arange(n) * (n + 1), rows * n + cols])
    return torch.nn.functional.one_hot(idx, n * n).to(dtype=dtype, device=device)


def delan_init(n: int, hidden: list[int], generators: list, count: int) -> dict:
    """Trunk 2n -> hidden and one output layer for [diag L (n), lower L (n(n-1)/2), V (1)]."""
    return mlp_init([2 * n, *hidden, n * (n + 1) // 2 + 1], generators, count)


def delan_terms(theta: dict, q, qd, activation: str = "softplus", eps: float = 1e-5):
    """(M, c, g, V) at (q, q̇), each batched like q (..., N, n)."""
    n = q.shape[-1]
    feats = torch.cat([torch.sin(q), torch.cos(q)], -1)
    jfeats = torch.cat([torch.diag_embed(torch.cos(q)), torch.diag_embed(-torch.sin(q))], -2)
    out, jac = mlp_forward_jacobian(theta, feats, jfeats, activation)  # (..., P+1), (..., P+1, n)
    raw, jl, potential, jv = out[..., :-1], jac[..., :-1, :], out[..., -1], jac[..., -1, :]
    d = torch.nn.functional.softplus(raw[..., :n])
    l_entries = torch.cat([d, raw[..., n:]], -1)
    jl = torch.cat([torch.sigmoid(raw[..., :n]).unsqueeze(-1) * jl[..., :n, :], jl[..., n:, :]], -2)
    sel = tril_selector(n, q.dtype, q.device)
    L = (l_entries @ sel).unflatten(-1, (n, n))
    Ldot = ((jl @ qd.unsqueeze(-1)).squeeze(-1) @ sel).unflatten(-1, (n, n))  # Σ_k ∂L/∂q_k q̇_k
    M = L @ L.mT + eps * torch.eye(n, dtype=q.dtype, device=q.device)
    v = (L.mT @ qd.unsqueeze(-1)).squeeze(-1)  # Lᵀq̇
    mdot_qd = (Ldot @ v.unsqueeze(-1) + L @ (Ldot.mT @ qd.unsqueeze(-1))).squeeze(-1)
    w = (qd.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2) @ sel.mT  # q̇_i v_j at each entry (i, j) of L
    half_dq_kinetic = (jl.mT @ w.unsqueeze(-1)).squeeze(-1)  # ½ ∂/∂q_k (q̇ᵀ M q̇) = q̇ᵀ (∂L/∂q_k) v
    return M, mdot_qd - half_dq_kinetic, jv, potential


def delan_torque(theta: dict, q, qd, qdd, activation: str = "softplus", eps: float = 1e-5):
    """(û, M_theta): û = M·q̈ + c + g."""
    M, c, g, _ = delan_terms(theta, q, qd, activation, eps)
    return (M @ qdd.unsqueeze(-1)).squeeze(-1) + c + g, M


def mlp_torque(theta: dict, q, qd, qdd, activation: str = "softplus"):
    """A black-box MLP on [q, q̇, q̈] and its implied inertia ∂û/∂q̈ (which it never has to keep
    symmetric or positive definite)."""
    n = q.shape[-1]
    x = torch.cat([q, qd, qdd], -1)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    jx = torch.cat([torch.zeros(2 * n, n, dtype=q.dtype, device=q.device), eye]).expand(*x.shape, n)
    u, jac = mlp_forward_jacobian(theta, x, jx, activation)
    return u, jac
