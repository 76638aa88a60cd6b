"""DDPM ancestral sampling (Ho et al., NeurIPS 2020, Eq. 6-7; Alg. 2 via the x0-parameterised mean).

Posterior q(x_prev | x_t, x0) mean = sqrt(abar_prev) beta_t'/(1-abar_t) x0 + sqrt(alpha_t')(1-abar_prev)/(1-abar_t) x_t,
variance (1-abar_prev)/(1-abar_t) beta_t' ("fixed_small"), with alpha_t' = abar_t/abar_prev, beta_t' = 1 - alpha_t'
(the strided form diffusers' DDPMScheduler uses for fewer steps).  No noise is added at t = 0.
"""
from __future__ import annotations

import math

import torch

from .base import noise_like, predict_x0, strided_steps


def ddpm(eps_fn, x, timesteps, alphas_cumprod, *, dc=None, callback=None, generator=None,
         prev_timesteps=None) -> torch.Tensor:
    """Ancestral sampling over descending integer ``timesteps`` (prev = t - T // steps by default)."""
    for i, t, tt, a, ap in strided_steps(timesteps, alphas_cumprod, x.device, prev_timesteps):
        x0, _ = predict_x0(eps_fn, x, x, tt, math.sqrt(a), math.sqrt(1 - a), dc)
        cur_alpha = a / ap
        cur_beta = 1 - cur_alpha
        mean = (math.sqrt(ap) * cur_beta / (1 - a)) * x0 + (math.sqrt(cur_alpha) * (1 - ap) / (1 - a)) * x
        if t > 0:
            var = max((1 - ap) / (1 - a) * cur_beta, 1e-20)
            mean = mean + math.sqrt(var) * noise_like(x, generator)
        x = mean
        if callback is not None:
            callback({"i": i, "t": tt, "x": x, "x0": x0})
    return x
