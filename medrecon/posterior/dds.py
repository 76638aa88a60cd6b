"""DDS: Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024; repo HJ-harry/DDS ``solver_2d.py``).

Each step: Tweedie x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), then ``cg_iters`` conjugate
gradient steps on the data term restricted to the Krylov subspace around x0_hat:

    (I + gamma A^H A) x = x0_hat + gamma A^H y,   started at x0_hat,

i.e. min_x gamma ||A x - y||^2 + ||x - x0_hat||^2 (``gamma`` weights the data term, as METHODS.md
and the reference code); then the DDIM update with stochasticity ``eta`` (0.85, METHODS.md)
with eps re-derived from the corrected x0.  Inner products are conjugated (``medrecon.linalg.cg``;
the reference code omits the conjugate).  Works with any operator having forward/adjoint/normal
and, through ``solver``, on any generic solver's data-consistency hook.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._util import alphas_cumprod, check_common, counted, noise, prox, run_solver

__all__ = ["dds", "dds_dc"]


def dds_dc(operator, y: torch.Tensor, gamma: float = 5.0, cg_iters: int = 5) -> Callable:
    """The DDS data step as a ``dc(x0_hat, t) -> x0`` hook: CG on (I + gamma A^H A) x = x0 + gamma A^H y."""
    if not gamma > 0:
        raise ValueError(f"gamma: expected > 0, got {gamma}")
    if cg_iters < 1:
        raise ValueError(f"cg_iters: expected >= 1, got {cg_iters}")
    rho = 1.0 / float(gamma)  # (A^H A + rho I) x = A^H y + rho x0 is the same system divided by gamma

    def dc(x0: torch.Tensor, t) -> torch.Tensor:
        return prox(operator, y, x0, rho, cg_iters)
    return dc


def dds(eps_fn, operator, y: torch.Tensor, betas, steps: int = 50, generator: torch.Generator | None = None,
        *, gamma: float = 5.0, cg_iters: int = 5, eta: float = 0.85, solver: str = "ddim", x_T=None,
        **solver_options) -> tuple[torch.Tensor, int]:
    """DDS posterior sample(s) for ``y = A x`` (+ noise): returns ``(x0, nfe)``.

    ``eps_fn(x, t)``: noise predictor on the discrete training timesteps of ``betas`` (as
    ``medrecon.sample``); ``x_T`` defaults to standard normal noise shaped like ``A^H y``.
    ``eta`` applies to ``solver="ddim"``; other solvers take their own ``solver_options``.
    """
    acp = alphas_cumprod(betas)
    check_common(operator, y, steps, len(acp), generator)
    if solver == "ddim":
        solver_options["eta"] = eta
    f, nfe = counted(eps_fn)
    if x_T is None:
        ref = operator.adjoint(y)
        x_T = noise(ref.shape, ref, generator)
    x = run_solver(f, x_T, solver, int(steps), betas, acp, dc=dds_dc(operator, y, gamma, cg_iters),
                   generator=generator, **solver_options)
    return x, nfe[0]
