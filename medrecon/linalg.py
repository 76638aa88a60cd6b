"""Conjugate gradient for Hermitian positive (semi-)definite operators on complex tensors.

Research code often writes the CG inner product as ``sum(a * b)``, forgetting the complex
conjugate (e.g. DDS's ``solver_2d``); that is not CG on complex data.  Here every inner product
is ``sum(conj(a) * b)`` taken over the image dims, batched over leading dims, so a batch of
independent systems runs in one loop with no host-device round trips (the stopping test runs on
the host only every ``check_every`` iterations).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["cg", "vdot"]


def vdot(a: torch.Tensor, b: torch.Tensor, ndim: int) -> torch.Tensor:
    """Conjugated inner product <a, b> = sum(conj(a) b) over the last ``ndim`` dims."""
    dims = tuple(range(-ndim, 0))
    return (a.conj() * b).sum(dim=dims, keepdim=True)


def cg(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 20,
    tol: float = 0.0,
    ndim: int = 2,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    check_every: int = 5,
) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` by conjugate gradient, batched over leading dims.

    ``normal`` must be Hermitian positive semi-definite (e.g. A^H A + lam I).  ``ndim`` is the
    number of trailing dims that form one unknown (2 for an image [..., H, W]).  Stops after
    ``max_iter`` iterations or once every system's residual norm is below ``tol * ||rhs||``; a
    system whose residual reaches the working precision is frozen (also with ``tol=0``).
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    scale = vdot(rhs, rhs, ndim).real
    if x0 is not None:
        nx = normal(x)
        r = rhs - nx
        scale_x = vdot(nx, nx, ndim).real  # a large start: round-off is relative to ||N x0||, not ||rhs||
    else:
        r = rhs.clone()
    p = r.clone()
    rr = vdot(r, r, ndim).real
    # never iterate below the working precision: once ||r|| ~ eps max(||rhs||, ||N x0||), rounding leaves
    # components in the null space of a semi-definite operator and CG would divide by ~0
    floor = max(float(tol), 4 * torch.finfo(rr.dtype).eps)
    stop = (floor * floor) * scale
    round_off = stop if x0 is None else torch.maximum(stop, (16 * torch.finfo(rr.dtype).eps) ** 2 * scale_x)
    tiny = torch.finfo(rr.dtype).tiny
    for it in range(max_iter):
        ap = normal(p)
        pap = vdot(p, ap, ndim).real
        # a converged system (rr <= stop, or a direction with no curvature left: pap ~ 0, as
        # when an exact solve is reached with tol=0) is frozen instead of dividing 0 by 0
        live = (rr > round_off) & (pap > tiny)
        alpha = torch.where(live, rr / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = vdot(r, r, ndim).real
        beta = torch.where(live, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
        if callback is not None:
            callback(it, x)
        if tol > 0 and (it + 1) % check_every == 0 and bool((rr <= stop).all()):
            break
    return x
