"""Euler and Heun samplers in the EDM/Karras form (Karras et al., NeurIPS 2022, Alg. 1, deterministic).

State z = x / alpha has noise level sigma = sqrt((1 - abar)/abar); dz/dsigma = (z - x0_hat)/sigma.
Euler: z' = z + (sigma' - sigma) d.  Heun (2nd order): average d with the slope at the Euler guess,
except on the final step to sigma = 0, which is Euler (Alg. 1 line 8).  The model sees the VP input
z / sqrt(1 + sigma^2) and the (fractional) timestep of each sigma, as diffusers' Euler/Heun schedulers.
"""
from __future__ import annotations

import math

import torch

from .base import predict_x0


def _x0(eps_fn, z, t, sigma, dc):
    c = math.sqrt(1 + sigma ** 2)  # z / c is the VP state; alpha = 1/c, sigma_vp = sigma/c
    x0, _ = predict_x0(eps_fn, z / c, z / c, t, 1 / c, sigma / c, dc)
    return x0


def euler(eps_fn, x, timesteps, sigmas, *, dc=None, callback=None, generator=None) -> torch.Tensor:
    """Euler over ``sigmas`` [n + 1] (trailing 0) with model timesteps ``timesteps`` [n]; x is the VP
    state at sigmas[0], returns x0."""
    s = [float(v) for v in sigmas]
    z = x * math.sqrt(1 + s[0] ** 2)
    for i, t in enumerate(timesteps):
        tt = torch.as_tensor(t).to(x.device)
        x0 = _x0(eps_fn, z, tt, s[i], dc)
        z = z + (s[i + 1] - s[i]) * ((z - x0) / s[i])
        if callback is not None:
            callback({"i": i, "t": tt, "x": z, "x0": x0})
    return z


def heun(eps_fn, x, timesteps, sigmas, *, dc=None, callback=None, generator=None) -> torch.Tensor:
    """Heun over ``sigmas`` [n + 1] (trailing 0); ``timesteps`` [n] map each sigmas[i] (i < n) to the
    model's time.  2n - 1 model calls."""
    s = [float(v) for v in sigmas]
    ts = [torch.as_tensor(t).to(x.device) for t in timesteps]
    z = x * math.sqrt(1 + s[0] ** 2)
    for i in range(len(ts)):
        x0 = _x0(eps_fn, z, ts[i], s[i], dc)
        d = (z - x0) / s[i]
        dt = s[i + 1] - s[i]
        z_e = z + dt * d
        if s[i + 1] > 0:
            x0_2 = _x0(eps_fn, z_e, ts[i + 1], s[i + 1], dc)
            d2 = (z_e - x0_2) / s[i + 1]
            z = z + dt * 0.5 * (d + d2)
        else:
            z = z_e
        if callback is not None:
            callback({"i": i, "t": ts[i], "x": z, "x0": x0})
    return z
