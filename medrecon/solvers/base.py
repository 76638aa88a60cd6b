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

``predict_x0`` below is the one place where the model is queried and the hook applied.
"""
from __future__ import annotations

from typing import Callable, Optional

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


def noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like x (circular complex with E|z|^2 = 1 for complex x)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def acp_at(alphas_cumprod: torch.Tensor, t: int, final: float = 1.0) -> float:
    """abar at integer timestep t; ``final`` for t < 0 (diffusers' ``final_alpha_cumprod`` / ``one``)."""
    return float(alphas_cumprod[t]) if t >= 0 else final
