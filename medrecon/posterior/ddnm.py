"""DDNM (Wang, Yu & Zhang, ICLR 2023) and the DiffPIR proximal variant (Zhu et al., CVPRW 2023).

DDNM, range-null-space decomposition (Alg. 1): x0 <- x0_hat + A^+ (y - A x0_hat), then DDIM with
``eta`` (0.85 in METHODS.md); time travel is not implemented.  A^+ is cheap where the
operator has ``project`` (single-coil Cartesian: A^+ = A^H = F^H M, the k-space replacement);
otherwise ``cg_iters`` CG steps on A^H A d = A^H (y - A x0_hat) from d = 0 (the minimum-norm
correction, i.e. A^+ in the limit; multi-coil SENSE).  Noise-free data; for noisy y use ``diffpir``.

DiffPIR (Alg. 1): x0 = argmin ||y - A x||^2 + rho_t ||x - x0_hat||^2 with
rho_t = lam sigma_n^2 / sigma_bar_t^2, sigma_bar_t^2 = (1 - abar_t)/abar_t (closed form
F^H (M y + rho F x0_hat) / (M + rho) for a mask; CG otherwise), then
x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) (sqrt(1 - zeta) eps_hat + sqrt(zeta) z),
eps_hat re-derived from x0.  sigma_n = 0 makes the data step the DDNM projection.
"""
from __future__ import annotations

from typing import Callable

import torch

from medrecon.sample import timesteps_for

from ._util import alphas_cumprod, check_common, counted, noise, prox, run_solver, sqrt

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
    return noise(ref.shape, ref, generator)


def ddnm(eps_fn, operator, y: torch.Tensor, betas, steps: int = 100, generator: torch.Generator | None = None,
         *, eta: float = 0.85, cg_iters: int = 10, solver: str = "ddim", x_T=None,
         **solver_options) -> tuple[torch.Tensor, int]:
    """DDNM sample(s) for noise-free ``y = A x``: ``(x0, nfe)``; any generic ``solver`` (eta for ddim)."""
    acp = alphas_cumprod(betas)
    check_common(operator, y, steps, len(acp), generator)
    if solver == "ddim":
        solver_options["eta"] = eta
    f, nfe = counted(eps_fn)
    x = run_solver(f, _init(operator, y, generator, x_T), solver, int(steps), betas, acp,
                   dc=ddnm_dc(operator, y, cg_iters), generator=generator, **solver_options)
    return x, nfe[0]


def diffpir(eps_fn, operator, y: torch.Tensor, betas, steps: int = 100, generator: torch.Generator | None = None,
            *, sigma_n: float = 0.0, lam: float = 1.0, zeta: float = 0.3, cg_iters: int = 10, x_T=None
            ) -> tuple[torch.Tensor, int]:
    """DiffPIR sample(s) for ``y = A x + n``, n ~ CN(0, sigma_n^2): ``(x0, nfe)``.

    ``lam`` and ``zeta`` are the paper's lambda and zeta (zeta = 1: fresh noise, 0: deterministic).
    Timesteps: the "leading" grid of ``medrecon.sample``'s DDIM, ending at abar = 1.
    """
    acp = alphas_cumprod(betas)
    n_train = len(acp)
    check_common(operator, y, steps, n_train, generator)
    if sigma_n < 0 or lam <= 0 or not 0 <= zeta <= 1:
        raise ValueError(f"sigma_n >= 0, lam > 0, 0 <= zeta <= 1 expected, got {sigma_n}, {lam}, {zeta}")
    dc_hard = ddnm_dc(operator, y, cg_iters)
    x = _init(operator, y, generator, x_T)
    ts = [int(t) for t in timesteps_for("ddim", int(steps), n_train)]
    tts = torch.tensor(ts, device=y.device)  # one host-to-device copy, no per-step transfer
    for i, t in enumerate(ts):
        tp = t - n_train // int(steps)
        a, ap = float(acp[t]), (float(acp[tp]) if tp >= 0 else 1.0)
        tt = tts[i]
        x0 = (x - sqrt(1 - a) * eps_fn(x, tt)) / sqrt(a)
        rho = lam * sigma_n ** 2 * a / (1 - a)
        x0 = prox(operator, y, x0, rho, cg_iters) if rho > 0 else dc_hard(x0, tt)
        eps = (x - sqrt(a) * x0) / sqrt(1 - a)
        x = sqrt(ap) * x0 + sqrt((1 - ap) * (1 - zeta)) * eps
        if zeta > 0 and ap < 1:
            x = x + sqrt((1 - ap) * zeta) * noise(x.shape, x, generator)
    return x, len(ts)
