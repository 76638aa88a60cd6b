"""Shared step interface of the generic solvers.

Every solver is a function ``solver(eps_fn, x, timesteps, alphas_cumprod, *, dc=None, callback=None,
generator=None, **options) -> x0`` where

- ``eps_fn(x, t)`` is the noise predictor, called with ``t`` a 0-d tensor holding the training timestep
  (int64 for discrete solvers, float64 for Euler/Heun, as diffusers passes it);
- ``timesteps`` is the explicit descending tensor of timesteps the solver visits;
- ``alphas_cumprod`` is the training abar table (float64, CPU);
- ``dc(x0_hat, t) -> x0_hat`` is the data-consistency hook applied to every x0 prediction
  (identity when None); the eps used by the step is then re-derived from the corrected x0 so that
  x_t = alpha x0 + sigma eps still holds (Chung et al., DPS/MCG convention);
- ``callback(dict(i=, t=, x=, x0=))`` is called after each step.

``predict_x0`` below is the one place where the model is queried and the hook applied; the abar table
(``alphas_cumprod``) and the noise draw (``noise_like``) are defined here once, for the solvers and the
posterior samplers (``medrecon.posterior.common`` re-exports them).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DcFn = Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def predict_x0(eps_fn: EpsFn, x_in: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alpha: float,
               sigma: float, dc: DcFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Query the model at (x_in, t) and return (x0_hat, eps_hat) for the VP state x = alpha x0 + sigma eps.

    ``x_in`` is what the model sees (x itself for VP solvers; the scaled input for Euler/Heun).
    """
    eps = eps_fn(x_in, t)
    if eps.shape != x.shape:
        raise ValueError(f"eps_fn: expected an output of shape {tuple(x.shape)}, got {tuple(eps.shape)}")
    x0 = (x - sigma * eps) / alpha
    if dc is not None:
        x0 = dc(x0, t)
        eps = (x - alpha * x0) / sigma if sigma > 0 else eps
    return x0, eps


def alphas_cumprod(betas) -> torch.Tensor:
    """The abar table of the training ``betas``: float32 cumprod as diffusers keeps it (so numbers match
    one-to-one), upcast to float64, on the CPU.  The one table every solver and posterior sampler uses."""
    b = torch.as_tensor(betas)
    if b.ndim != 1 or len(b) < 1 or not torch.is_floating_point(b):
        raise ValueError("betas: expected a 1-D float tensor of training betas, e.g. make_betas('linear', 1000)")
    return torch.cumprod(1.0 - b.detach().cpu().float(), 0).double()


def noise_like(x: torch.Tensor, generator: Optional[torch.Generator], shape=None) -> torch.Tensor:
    """Standard normal noise with x's dtype and device, shaped like x (or ``shape``); circular complex
    with E|z|^2 = 1 for complex x.  The one noise draw of the solvers and posterior samplers."""
    return torch.randn(x.shape if shape is None else shape, generator=generator, dtype=x.dtype, device=x.device)


def acp_at(alphas_cumprod: torch.Tensor, t: int, final: float = 1.0) -> float:
    """abar at integer timestep t; ``final`` for t < 0 (diffusers' ``final_alpha_cumprod`` / ``one``)."""
    return float(alphas_cumprod[t]) if t >= 0 else final


def strided_steps(timesteps, alphas_cumprod: torch.Tensor, device, prev_timesteps=None) -> Iterator[tuple]:
    """``(i, t, t_dev, abar_t, abar_prev)`` per step of a strided DDPM/DDIM loop over descending integer
    ``timesteps``: ``prev_timesteps`` defaults to t - T // N (diffusers' DDIM/DDPMScheduler), abar = 1
    below 0; ``t_dev`` indexes one host-to-device copy of the timesteps (no sync per step)."""
    n_train = len(alphas_cumprod)
    ts = [int(t) for t in timesteps]
    t_dev = torch.tensor(ts, device=device)
    if prev_timesteps is None:
        prev_timesteps = [t - n_train // len(ts) for t in ts]
    for i, (t, tp) in enumerate(zip(ts, prev_timesteps)):
        yield i, t, t_dev[i], acp_at(alphas_cumprod, t), acp_at(alphas_cumprod, int(tp))


def log_snr_grid(timesteps, alphas_cumprod: torch.Tensor, device) -> tuple[list, torch.Tensor, list, list, list]:
    """``(ts, t_dev, alpha, sigma, lambda)`` of the multistep solvers (DPM-Solver++, UniPC) over descending
    integer ``timesteps``, each list with a final entry for sigma = 0 (alpha 1, lambda inf)."""
    ts = [int(t) for t in timesteps]
    t_dev = torch.tensor(ts, device=device)  # one copy, not a host-device sync per step
    al = [math.sqrt(float(alphas_cumprod[t])) for t in ts] + [1.0]
    si = [math.sqrt(1 - float(alphas_cumprod[t])) for t in ts] + [0.0]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(al, si)]
    return ts, t_dev, al, si, lam
