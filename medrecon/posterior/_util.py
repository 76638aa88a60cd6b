"""Shared plumbing of the posterior samplers: input checks, NFE counting, the proximal data step,
and running any generic solver from an intermediate point of its grid (CCDF).

Not public API; each sampler lives in its own module of ``medrecon.posterior``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from medrecon.linalg import cg
from medrecon.sample import SOLVERS, euler_sigmas, sample, solver_options, timesteps_for
from medrecon.solvers import ddim, ddpm, dpm_solver_pp, euler, heun, unipc


def alphas_cumprod(betas) -> torch.Tensor:
    """abar table as ``medrecon.sample`` builds it (float32 cumprod, upcast to float64, CPU)."""
    b = torch.as_tensor(betas)
    if b.ndim != 1 or len(b) < 1 or not torch.is_floating_point(b):
        raise ValueError("betas: expected a 1-D float tensor of training betas, e.g. make_betas('linear', 1000)")
    return torch.cumprod(1.0 - b.detach().cpu().float(), 0).double()


def check_common(operator, y, steps, n_train: int, generator, name: str = "y") -> None:
    """Validate the arguments every sampler shares (clear errors at the boundary)."""
    for attr in ("forward", "adjoint", "normal"):
        if not callable(getattr(operator, attr, None)):
            raise ValueError(f"operator: expected an object with forward/adjoint/normal (a medrecon.physics "
                             f"operator), got {type(operator).__name__} without {attr}()")
    if not isinstance(y, torch.Tensor) or not y.is_complex():
        raise ValueError(f"{name}: expected complex k-space (torch.complex64/128), got "
                         f"{getattr(y, 'dtype', type(y).__name__)}")
    if not torch.isfinite(torch.view_as_real(y)).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n_train:
        raise ValueError(f"steps: expected an int in [1, {n_train}], got {steps!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator: expected a torch.Generator (seeds are explicit; nothing reads the global RNG)")
    if generator.device.type != y.device.type:
        raise ValueError(f"generator: on {generator.device} but y is on {y.device}; "
                         f"create it with torch.Generator(device=y.device)")


def counted(eps_fn: Callable) -> tuple[Callable, list]:
    """``eps_fn`` wrapped to count its calls in ``box[0]`` (a host int: no device sync)."""
    box = [0]

    def f(x, t):
        box[0] += 1
        return eps_fn(x, t)
    return f, box


def noise(shape, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise (circular complex with E|z|^2 = 1 for complex ``like``)."""
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def prox(operator, y: torch.Tensor, x0: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """argmin_x ||A x - y||^2 + rho ||x - x0||^2 by ``iters`` CG steps on (A^H A + rho I) x = A^H y + rho x0
    started at x0 (conjugated inner products).  rho = 0 gives x0 + A^+ (y - A x0) in the limit.

    Systems whose residual reaches round-off (100 eps relative) are frozen: with rho = 0 and a
    projection-like A^H A (Cartesian masks) CG converges in one step and further steps on the
    round-off residual diverge.  No host sync (the early-exit test is never taken).
    """
    rhs = operator.adjoint(y)
    normal = operator.normal
    if rho > 0:
        rhs = rhs + rho * x0
        normal = (lambda v: operator.normal(v) + rho * v)
    tol = 100 * torch.finfo(x0.real.dtype).eps
    return cg(normal, rhs, x0=x0, max_iter=iters, tol=tol, check_every=iters + 1)


_FROM_START = ("ddim", "ddpm", "dpm-solver++", "unipc", "euler", "heun")


def grid_abar(solver: str, steps: int, acp: torch.Tensor, start: int) -> float:
    """abar of the state the solver expects at index ``start`` of its ``steps``-step grid."""
    if solver in ("euler", "heun"):
        _, sig = euler_sigmas(acp, steps)
        return 1.0 / (1.0 + float(sig[start]) ** 2)
    return float(acp[int(timesteps_for(solver, steps, len(acp))[start])])


def run_solver(eps_fn, x, solver: str, steps: int, betas, acp, *, dc, generator, start: int = 0,
               callback=None, **options) -> torch.Tensor:
    """Run ``solver`` on its ``steps``-step grid (diffusers' spacing, see ``medrecon.sample``) from
    grid index ``start`` (0 = the whole grid, any solver) with the data-consistency hook ``dc``.
    (dds/ddnm/ccdf run ``solver="ddim"`` through ``ddim_dc`` instead, the reference update.)"""
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if start == 0:
        return sample(eps_fn, x, solver, steps, betas, dc=dc, generator=generator, callback=callback, **options)
    unknown = sorted(set(options) - set(solver_options(solver)))
    if unknown:
        valid = list(solver_options(solver)) or "none"
        raise ValueError(f"{solver}: unknown option(s) {unknown}; valid options: {valid}")
    if solver not in _FROM_START:
        raise ValueError(f"solver: {solver!r} cannot start mid-grid; use one of {_FROM_START}")
    n_train = len(acp)
    if solver in ("euler", "heun"):
        ts, sig = euler_sigmas(acp, steps)
        fn = euler if solver == "euler" else heun
        return fn(eps_fn, x, torch.from_numpy(ts[start:].copy()), sig[start:], dc=dc, generator=generator,
                  callback=callback, **options)
    ts = timesteps_for(solver, steps, n_train)
    if solver in ("ddim", "ddpm"):
        prev = ts - n_train // steps
        fn = ddim if solver == "ddim" else ddpm
        return fn(eps_fn, x, ts[start:], acp, dc=dc, generator=generator, prev_timesteps=prev[start:],
                  callback=callback, **options)
    fn = dpm_solver_pp if solver == "dpm-solver++" else unipc
    return fn(eps_fn, x, ts[start:], acp, dc=dc, generator=generator, callback=callback, **options)


def sqrt(v: float) -> float:
    return math.sqrt(max(v, 0.0))
