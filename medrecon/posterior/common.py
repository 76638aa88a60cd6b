"""Shared plumbing of the posterior samplers: the abar table and the noise draw (defined once in
``medrecon.solvers.base``, re-exported here), input checks, NFE counting, the proximal data step,
the Langevin corrector with its soft data-consistency gradient rescaling (Score-MRI, HFS-SDE,
SPIRiT-Diffusion), the step callback and the abar of a solver's grid point (CCDF).

Each sampler lives in its own module of ``medrecon.posterior`` and imports what it needs from here.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from medrecon.linalg import cg
from medrecon.sample import check_steps, euler_sigmas, timesteps_for
from medrecon.solvers.base import alphas_cumprod, noise_like

__all__ = ["alphas_cumprod", "noise_like", "check_steps", "check_finite", "check_generator", "check_common",
           "counted", "prox", "grid_abar", "sqrt", "norm", "rescaled", "soft_dc", "langevin", "step_callback",
           "DC_MODES", "IMAGE", "COILS"]

DC_MODES = ("hard", "gradient")  # data consistency of the SDE samplers: projection, or the rescaled gradient
IMAGE = (-2, -1)  # norms per image [..., H, W]
COILS = (-3, -2, -1)  # norms per slice over all coils [..., C, H, W]


def check_finite(t: torch.Tensor, name: str) -> None:
    """A clear error when ``t`` holds NaN or Inf (complex or real)."""
    if not torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all():
        raise ValueError(f"{name}: contains NaN or Inf")


def check_generator(generator, like: torch.Tensor, name: str = "y") -> None:
    """Seeds are explicit: ``generator`` must be a torch.Generator on the device type of ``like`` (the
    input called ``name``)."""
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator: expected a torch.Generator (seeds are explicit; nothing reads the global RNG)")
    if generator.device.type != like.device.type:
        raise ValueError(f"generator: on {generator.device} but {name} is on {like.device}; "
                         f"create it with torch.Generator(device={name}.device)")


def check_common(operator, y, steps, n_train: int, generator, name: str = "y") -> None:
    """Validate the arguments every sampler shares (clear errors at the boundary)."""
    for attr in ("forward", "adjoint", "normal"):
        if not callable(getattr(operator, attr, None)):
            raise ValueError(f"operator: expected an object with forward/adjoint/normal (a medrecon.physics "
                             f"operator), got {type(operator).__name__} without {attr}()")
    if not isinstance(y, torch.Tensor) or not y.is_complex():
        raise ValueError(f"{name}: expected complex k-space (torch.complex64/128), got "
                         f"{getattr(y, 'dtype', type(y).__name__)}")
    check_finite(y, name)
    check_steps(steps, n_train)
    check_generator(generator, y, name)


def counted(eps_fn: Callable) -> tuple[Callable, list]:
    """``eps_fn`` wrapped to count its evaluations in ``box[0]`` (a host int: no device sync): one per
    call, or len(t) for a window call with 1-D ``t`` (ParaDiGMS, `medrecon.solvers.paradigms`)."""
    box = [0]

    def f(x, t):
        box[0] += t.numel() if isinstance(t, torch.Tensor) and t.ndim == 1 else 1
        return eps_fn(x, t)
    return f, box


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


def grid_abar(solver: str, steps: int, acp: torch.Tensor, start: int) -> float:
    """abar of the state the solver expects at index ``start`` of its ``steps``-step grid."""
    if solver in ("euler", "heun"):
        _, sig = euler_sigmas(acp, steps)
        return 1.0 / (1.0 + float(sig[start]) ** 2)
    return float(acp[int(timesteps_for(solver, steps, len(acp))[start])])


def sqrt(v: float) -> float:
    return math.sqrt(max(v, 0.0))


def norm(v: torch.Tensor, dims=IMAGE) -> torch.Tensor:
    """Euclidean norm over ``dims`` (kept), one per image (``IMAGE``) or per slice of coils (``COILS``)."""
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True)


def rescaled(g: torch.Tensor, s_norm: torch.Tensor, weight: float, dims=IMAGE) -> torch.Tensor:
    """g scaled to weight * ||s|| per item (the HFS-SDE / SPIRiT-Diffusion repos' meas_grad
    normalisation); 0 where g = 0."""
    ng = norm(g, dims)
    return torch.where(ng > 0, g * (weight * s_norm / ng.clamp_min(1e-30)), torch.zeros_like(g))


def soft_dc(score: torch.Tensor, grad: Optional[torch.Tensor], weight: float, dims=IMAGE,
            s_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The score with the soft data-consistency gradient ``grad`` = A^H (A x - y) rescaled to
    ``weight`` ||s|| subtracted (``dc="gradient"``); ``grad=None`` (hard DC) returns the score."""
    if grad is None:
        return score
    return score - rescaled(grad, norm(score, dims) if s_norm is None else s_norm, weight, dims)


def langevin(x: torch.Tensor, score: torch.Tensor, z: torch.Tensor, snr: float, *, alpha: float = 1.0,
             dims=IMAGE, grad: Optional[torch.Tensor] = None, weight: float = 0.0,
             project: Optional[Callable] = None) -> torch.Tensor:
    """One Langevin corrector update (Song et al., ICLR 2021, ``sampling.py::LangevinCorrector``):

        e = 2 alpha (snr ||z|| / ||s||)^2 per item,   x <- x + e d + sqrt(2 e) P z,

    d = ``soft_dc(score, grad, weight)`` (the score itself for hard DC), P = ``project`` (identity
    when None; the high-pass of HFS-SDE, the coil projector of SPIRiT-Diffusion), norms over ``dims``
    of the unprojected z as the reference codes; a zero score (e.g. an untrained, zero-initialised
    output layer) gives no move instead of NaN."""
    ns = norm(score, dims)
    step = torch.where(ns > 0, 2 * alpha * (snr * norm(z, dims) / ns.clamp_min(1e-30)) ** 2, 0.0)
    drift = soft_dc(score, grad, weight, dims, ns)
    return x + step * drift + (2 * step).sqrt() * (z if project is None else project(z))


def step_callback(callback: Optional[Callable]) -> Optional[Callable]:
    """The posterior samplers' ``callback(i, x)`` as the solvers' dict callback (``{"i", "t", "x", "x0"}``)."""
    if callback is None:
        return None
    return lambda d: callback(d["i"], d["x"])
