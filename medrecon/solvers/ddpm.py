"""DDPM ancestral sampling (Ho et al., NeurIPS 2020, Eq. 6-7; Alg. 2 via the x0-parameterised mean).

Posterior q(x_prev | x_t, x0) mean = sqrt(abar_prev) beta_t'/(1-abar_t) x0 + sqrt(alpha_t')(1-abar_prev)/(1-abar_t) x_t,
variance (1-abar_prev)/(1-abar_t) beta_t' ("fixed_small"), with alpha_t' = abar_t/abar_prev, beta_t' = 1 - alpha_t'
(the strided form diffusers' DDPMScheduler uses for fewer steps).  No noise is added at t = 0.
"""
from __future__ import annotations

import math

import torch

from .base import acp_at, noise_like, predict_x0


def ddpm(eps_fn, x, timesteps, alphas_cumprod, *, dc=None, callback=None, generator=None,
         prev_timesteps=None) -> torch.Tensor:
    """Ancestral sampling over descending integer ``timesteps`` (prev = t - T // steps by default)."""
    n_train = len(alphas_cumprod)
    ts = [int(t) for t in timesteps]
    t_dev = torch.tensor(ts, device=x.device)  # one copy, not a host-device sync per step
    if prev_timesteps is None:
        prev_timesteps = [t - n_train // len(ts) for t in ts]
    for i, (t, tp) in enumerate(zip(ts, prev_timesteps)):
        a, ap = acp_at(alphas_cumprod, t), acp_at(alphas_cumprod, int(tp))
        tt = t_dev[i]
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
