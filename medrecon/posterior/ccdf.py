"""CCDF: Come-Closer-Diffuse-Faster (Chung, Sim & Ye, CVPR 2022).

Instead of starting from pure noise at t = T, forward-diffuse a cheap initial estimate x_init
(zero-filled A^H y, or a few CG-SENSE iterations) to t0 < 1:

    x_{t0} = sqrt(abar_{t0}) x_init + sqrt(1 - abar_{t0}) z,   z from the explicit generator,

and run only the last round(t0 N) steps of an N-step generic solver with a data-consistency hook
(the paper's reverse step + projection; its contraction theorem: the error of x_init shrinks, so a better
initialisation needs fewer steps).  The hook defaults to the DDNM projection (A^+) and can be the
DDS proximal CG step (``dc="dds"``) or any callable ``dc(x0_hat, t)``.
"""
from __future__ import annotations

import torch

from medrecon.linalg import cg

from ._util import alphas_cumprod, check_common, counted, grid_abar, noise, run_solver, sqrt
from .ddnm import ddnm_dc
from .dds import dds_dc

__all__ = ["ccdf", "initial_estimate"]


def initial_estimate(operator, y: torch.Tensor, cg_iters: int = 0, lam: float = 0.0) -> torch.Tensor:
    """A^H y (``cg_iters`` = 0: zero-filled / S^H-combined) or CG-SENSE on (A^H A + lam I) x = A^H y."""
    rhs = operator.adjoint(y)
    if cg_iters <= 0:
        return rhs
    normal = operator.normal if lam == 0 else (lambda v: operator.normal(v) + lam * v)
    return cg(normal, rhs, max_iter=cg_iters)


def ccdf(eps_fn, operator, y: torch.Tensor, betas, steps: int = 100, generator: torch.Generator | None = None,
         *, t0: float = 0.2, x_init=None, init_cg_iters: int = 0, solver: str = "ddim", dc="project",
         gamma: float = 5.0, cg_iters: int = 10, **solver_options) -> tuple[torch.Tensor, int]:
    """CCDF sample(s): diffuse ``x_init`` (default ``initial_estimate(operator, y, init_cg_iters)``) to the
    grid point at fraction ``t0`` of an N = ``steps`` grid, then run the remaining round(t0 N) steps of
    ``solver`` (ddim, ddpm, dpm-solver++, unipc, euler, heun; ``solver_options`` such as ``eta``)
    with the hook ``dc`` ("project", "dds" or a callable).  Returns ``(x0, nfe)``."""
    acp = alphas_cumprod(betas)
    check_common(operator, y, steps, len(acp), generator)
    if not 0 < t0 <= 1:
        raise ValueError(f"t0: expected 0 < t0 <= 1, got {t0}")
    if dc == "project":
        dc = ddnm_dc(operator, y, cg_iters)
    elif dc == "dds":
        dc = dds_dc(operator, y, gamma, cg_iters)
    elif not callable(dc):
        raise ValueError(f"dc: expected 'project', 'dds' or a callable dc(x0_hat, t), got {dc!r}")
    steps = int(steps)
    start = steps - max(1, round(t0 * steps))
    if x_init is None:
        x_init = initial_estimate(operator, y, init_cg_iters)
    a = grid_abar(solver, steps, acp, start)
    x = sqrt(a) * x_init + sqrt(1 - a) * noise(x_init.shape, x_init, generator)
    f, nfe = counted(eps_fn)
    x = run_solver(f, x, solver, steps, betas, acp, dc=dc, generator=generator, start=start, **solver_options)
    return x, nfe[0]
