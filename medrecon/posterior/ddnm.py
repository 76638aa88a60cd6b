"""DDNM (Wang, Yu & Zhang, ICLR 2023) and the DiffPIR proximal variant (Zhu et al., CVPRW 2023).

DDNM (repo wyhuai/DDNM ``functions/svd_ddnm.py::ddnm_diffusion`` L57-65, noise-free y): Tweedie
x0_hat from the network's eps, range-null-space correction x0 = x0_hat + A^+ (y - A x0_hat)
(Eq. 12-13), then x_t' = sqrt(abar') x0 + sqrt(1 - abar') (sqrt(1 - eta^2) eps + eta z) with the
network's eps (``ddim_dc``; ``--eta`` 0.85 in main.py).  Time travel is not implemented.  A^+ is
cheap where the operator has ``project`` (single-coil Cartesian: the k-space replacement);
otherwise ``cg_iters`` CG steps on A^H A d = A^H (y - A x0_hat) from d = 0 (the minimum-norm
correction, i.e. A^+ in the limit; multi-coil SENSE, where the repo has no A^+).  Previously
medrecon ran Song's DDIM with eps re-derived from the corrected x0, which at 50 steps passes only
10-30% of each correction into x_t'.  Measured on validation slices (simulator seeds 1500-1503,
8x equispaced, brain128-vp, 50 NFE, seed 0), old -> reference: 16.63 -> 16.37, 25.97 -> 29.31,
18.04 -> 17.72, 21.46 -> 21.51 dB (mean 20.53 -> 21.23).  For eta > 0 the update under-disperses
at any N (tests/posterior/test_posterior.py); its mean converges to the exact posterior mean under SENSE
(tests/posterior/test_vp_sense_exact.py), which the re-derived-eps update does not.

DiffPIR (Alg. 1; repo yuanzhi-zhu/DiffPIR ``main_ddpir_inpainting.py`` L261-293):
x0 = argmin ||y - A x||^2 + rho_t ||x - x0_hat||^2 with rho_t = lam sigma_n^2 / sigma_bar_t^2,
sigma_bar_t^2 = (1 - abar_t)/abar_t (closed form F^H (M y + rho F x0_hat) / (M + rho) for a mask;
CG otherwise), then x_t' = sqrt(abar') x0 + sqrt(1 - abar') (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)
with eps_hat *re-derived* from x0 as the repo does (L290, its default eta = 0): ``ddim_dc`` with
``effective_eps=True``, eta = sqrt(zeta).  sigma_n = 0 makes the data step the DDNM projection.
Departure: timesteps on the leading DDIM grid (the repo's default is a quadratic grid).
"""
from __future__ import annotations

from typing import Callable

import torch

from .common import alphas_cumprod, check_common, counted, noise_like, prox, sqrt, step_callback
from .ddim_dc import ddim_dc, grid, run_dc

__all__ = ["ddnm", "ddnm_dc", "diffpir"]


def ddnm_dc(operator, y: torch.Tensor, cg_iters: int = 10) -> Callable:
    """``dc(x0_hat, t) = x0_hat + A^+ (y - A x0_hat)`` (``project`` when the operator has it)."""
    if cg_iters < 1:
        raise ValueError(f"cg_iters: expected >= 1, got {cg_iters}")
    project = getattr(operator, "project", None)

    def dc(x0: torch.Tensor, t) -> torch.Tensor:
        if project is not None:
            return project(x0, y)
        return prox(operator, y, x0, 0.0, cg_iters)
    return dc


def _init(operator, y, generator, x_T):
    if x_T is not None:
        return x_T
    ref = operator.adjoint(y)
    return noise_like(ref, generator)


def ddnm(eps_fn, operator, y: torch.Tensor, betas, steps: int = 100, generator: torch.Generator | None = None,
         *, eta: float = 0.85, cg_iters: int = 10, solver: str = "ddim", x_T=None, callback=None,
         **solver_options) -> tuple[torch.Tensor, int]:
    """DDNM sample(s) for noise-free ``y = A x``: ``(x0, nfe)``.  ``solver="ddim"``: the reference
    update (``ddim_dc``, ``eta``); another name: that generic solver with the projection as its hook.
    ``callback(i, x)``: after each step."""
    acp = alphas_cumprod(betas)
    check_common(operator, y, steps, len(acp), generator)
    f, nfe = counted(eps_fn)
    x = run_dc(f, _init(operator, y, generator, x_T), solver, steps, acp, dc=ddnm_dc(operator, y, cg_iters),
               eta=eta, generator=generator, callback=callback, method="ddnm", **solver_options)
    return x, nfe[0]


def diffpir(eps_fn, operator, y: torch.Tensor, betas, steps: int = 100, generator: torch.Generator | None = None,
            *, sigma_n: float = 0.0, lam: float = 1.0, zeta: float = 0.3, cg_iters: int = 10, x_T=None,
            callback=None) -> tuple[torch.Tensor, int]:
    """DiffPIR sample(s) for ``y = A x + n``, n ~ CN(0, sigma_n^2): ``(x0, nfe)``.

    ``lam`` and ``zeta`` are the paper's lambda and zeta (zeta = 1: fresh noise, 0: deterministic).
    Timesteps: the "leading" grid of ``medrecon.sample``'s DDIM, ending at abar = 1.  ``callback(i, x)``:
    after each step.
    """
    acp = alphas_cumprod(betas)
    n_train = len(acp)
    check_common(operator, y, steps, n_train, generator)
    if sigma_n < 0 or lam <= 0 or not 0 <= zeta <= 1:
        raise ValueError(f"sigma_n >= 0, lam > 0, 0 <= zeta <= 1 expected, got {sigma_n}, {lam}, {zeta}")
    dc_hard = ddnm_dc(operator, y, cg_iters)

    def dc(x0: torch.Tensor, t) -> torch.Tensor:
        a = float(acp[int(t)])
        rho = lam * sigma_n ** 2 * a / (1 - a)
        return prox(operator, y, x0, rho, cg_iters) if rho > 0 else dc_hard(x0, t)

    f, nfe = counted(eps_fn)
    x = ddim_dc(f, _init(operator, y, generator, x_T), grid(steps, n_train), acp, dc=dc, eta=sqrt(zeta),
                generator=generator, effective_eps=True, callback=step_callback(callback))
    return x, nfe[0]
