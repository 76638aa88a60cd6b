"""DPS: Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, Alg. 1).

Each step: x0_hat(x_t) by Tweedie through the network (with autograd), the ancestral/DDIM
update x' (Alg. 1 lines 4-7; eta = 1 is DDPM ancestral sampling), then the likelihood step

    x_prev = x' - zeta grad_{x_t} ||y - A x0_hat(x_t)||      (plain norm, per sample)

as the official code does; this is Alg. 1 line 8 with step zeta_i = zeta / (2 ||y - A x0_hat||)
on the squared norm (the paper's zeta' = zeta / 2).  Handles measurement noise implicitly
(the gradient step, not a projection), so observed k-space is matched only approximately.
One forward and one backward pass of the network per step (nfe counts forward passes).
"""
from __future__ import annotations

import torch

from medrecon.sample import timesteps_for
from medrecon.solvers.base import strided_steps

from .common import alphas_cumprod, check_common, noise_like, sqrt

__all__ = ["dps"]


def dps(eps_fn, operator, y: torch.Tensor, betas, steps: int = 1000, generator: torch.Generator | None = None,
        *, zeta: float = 1.0, eta: float = 1.0, x_T=None, callback=None) -> tuple[torch.Tensor, int]:
    """DPS sample(s) for ``y = A x + n``: ``(x0, nfe)``.  ``eps_fn`` must be differentiable
    (e.g. ``DiffusionModel.eps``, not its no-grad ``eps_fn``).  Timesteps: ``medrecon.sample``'s
    DDIM/DDPM "leading" grid, ending at abar = 1.  ``callback(i, x)``: after each step."""
    acp = alphas_cumprod(betas)
    n_train = len(acp)
    check_common(operator, y, steps, n_train, generator)
    if zeta < 0 or eta < 0:
        raise ValueError(f"zeta, eta: expected >= 0, got {zeta}, {eta}")
    if x_T is None:
        ref = operator.adjoint(y)
        x_T = noise_like(ref, generator)
    x = x_T.detach()
    lead = x.ndim - 2  # per-sample norms over everything after the image's leading (batch) dims
    for i, _, tt, a, ap in strided_steps(timesteps_for("ddim", int(steps), n_train), acp, y.device):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = eps_fn(x, tt)
            x0 = (x - sqrt(1 - a) * eps) / sqrt(a)
            r = y - operator.forward(x0)
            norm = torch.linalg.vector_norm(r.flatten(lead) if lead else r.reshape(-1), dim=-1)
            (grad,) = torch.autograd.grad(norm.sum(), x)
        x, x0, eps = x.detach(), x0.detach(), eps.detach()
        std = eta * sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x_new = sqrt(ap) * x0 + sqrt(1 - ap - std ** 2) * eps
        if std > 0:
            x_new = x_new + std * noise_like(x, generator)
        x = x_new - zeta * grad
        if callback is not None:
            callback(i, x)
    return x, int(steps)
