"""DDIM (Song, Meng & Ermon, ICLR 2021, Eq. 12) with stochasticity eta (Eq. 16).

x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
s = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev).
eta = 0 is the deterministic first-order solver of the probability-flow ODE; eta = 1 is ancestral.
The step after the last selected timestep goes to abar = 1 (diffusers' ``set_alpha_to_one=True``).
"""
from __future__ import annotations

import math

import torch

from .base import noise_like, predict_x0, strided_steps


def ddim(eps_fn, x, timesteps, alphas_cumprod, *, eta: float = 0.0, dc=None, callback=None,
         generator=None, prev_timesteps=None) -> torch.Tensor:
    """Run DDIM over descending integer ``timesteps``; ``prev_timesteps`` defaults to
    t - (T // len(timesteps)) as diffusers' DDIMScheduler (negative -> abar = 1)."""
    if eta < 0:
        raise ValueError(f"eta: expected >= 0, got {eta}")
    for i, _, tt, a, ap in strided_steps(timesteps, alphas_cumprod, x.device, prev_timesteps):
        x0, eps = predict_x0(eps_fn, x, x, tt, math.sqrt(a), math.sqrt(1 - a), dc)
        std = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - std ** 2, 0.0)) * eps
        if eta > 0:
            x = x + std * noise_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": tt, "x": x, "x0": x0})
    return x
