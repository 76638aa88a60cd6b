"""DPM-Solver++ multistep, data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 2 (2M); 3M as in diffusers).

With lambda = log(alpha/sigma), h = lambda_t - lambda_s and x0 predictions m0, m1, m2 at the last steps:
  order 1: x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) m0                         (= DDIM)
  order 2: ... - 0.5 alpha_t (e^{-h} - 1) D1,  D1 = (m0 - m1) / r0, r0 = h_0 / h      (midpoint, Alg. 2)
  order 3: D1, D2 from the three last predictions (diffusers ``multistep_dpm_solver_third_order_update``).
Lower orders are used while history is short; the last step is first order (final sigma 0, as
diffusers' ``final_sigmas_type="zero"``), and with fewer than 15 steps the second-to-last too
(``lower_order_final``).
"""
from __future__ import annotations

import math

import torch

from .base import log_snr_grid, predict_x0


def dpm_solver_pp(eps_fn, x, timesteps, alphas_cumprod, *, order: int = 2, lower_order_final: bool = True,
                  dc=None, callback=None, generator=None) -> torch.Tensor:
    """Multistep DPM-Solver++ over descending integer ``timesteps``, ending at abar = 1 (x0)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order: expected 1, 2 or 3, got {order}")
    ts, t_dev, al, si, lam = log_snr_grid(timesteps, alphas_cumprod, x.device)
    n = len(ts)
    hist: list[torch.Tensor] = []
    for i, t in enumerate(ts):
        tt = t_dev[i]
        x0, _ = predict_x0(eps_fn, x, x, tt, al[i], si[i], dc)
        hist = (hist + [x0])[-3:]
        last = i == n - 1
        second_last = i == n - 2 and lower_order_final and n < 15
        k = min(order, len(hist))
        if last:
            k = 1
        elif second_last:
            k = min(k, 2)
        h = lam[i + 1] - lam[i]
        em1 = math.expm1(-h) if math.isfinite(h) else -1.0
        a_t, s_t = al[i + 1], si[i + 1]
        x = (s_t / si[i]) * x - a_t * em1 * x0
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1 = (hist[-1] - hist[-2]) / r0
            if k == 2:
                x = x - 0.5 * a_t * em1 * d1
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_0, d1_1 = d1, (hist[-2] - hist[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + a_t * (em1 / h + 1.0) * d1 - a_t * ((em1 + h) / h ** 2 - 0.5) * d2
        if callback is not None:
            callback({"i": i, "t": tt, "x": x, "x0": x0})
    return x
