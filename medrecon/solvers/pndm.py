"""PNDM: pseudo numerical methods for diffusion models (Liu et al., ICLR 2022).

The "transfer" phi(x_t, eps, t -> t') = sqrt(abar')/sqrt(abar) (x_t - sqrt(1 - abar) eps) + sqrt(1 - abar') eps
(Eq. 9, the DDIM step) is fed with combined noise estimates:
- pseudo Runge-Kutta warm-up (Eq. 13, 4 model calls per step at t, t - d/2, t - d/2, t - d with
  weights 1/6, 1/3, 1/3, 1/6) for the first 3 steps, then
- pseudo linear multistep (PLMS, Eq. 12): e' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24.
With ``skip_prk_steps=True`` the warm-up is diffusers' PLMS start (one Heun-like step, then AB2, AB3).
The step sequence, the model-call timesteps and the final level follow diffusers' PNDMScheduler with
its default config: "leading" spacing, ``skip_prk_steps=False``, ``set_alpha_to_one=False`` (so the
last step lands on abar_0 of the training table, not on abar = 1; pass ``set_alpha_to_one=True`` to
end exactly at x0).  The data-consistency hook acts on the x0 implied by each combined estimate.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def pndm_timesteps(steps: int, n_train: int, skip_prk_steps: bool = False) -> tuple[np.ndarray, int]:
    """(model-call timesteps, number of PRK calls) exactly as diffusers' PNDMScheduler.set_timesteps."""
    ratio = n_train // steps
    ts = (np.arange(0, steps) * ratio).round().astype(np.int64)
    if skip_prk_steps:
        prk = np.array([], dtype=np.int64)
        plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
    else:
        prk = np.array(ts[-4:]).repeat(2) + np.tile(np.array([0, n_train // steps // 2]), 4)  # pndm_order = 4
        prk = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
        plms = ts[:-3][::-1].copy()
    return np.concatenate([prk, plms]).astype(np.int64), len(prk)


def pndm(eps_fn, x, steps, alphas_cumprod, *, skip_prk_steps: bool = False, set_alpha_to_one: bool = False,
         dc=None, callback=None, generator=None) -> torch.Tensor:
    """PNDM with ``steps`` inference steps of the training table ``alphas_cumprod``."""
    n_train = len(alphas_cumprod)
    ratio = n_train // steps
    final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
    timesteps, n_prk = pndm_timesteps(steps, n_train, skip_prk_steps)

    def transfer(sample, t, tp, e):
        a = float(alphas_cumprod[t])
        ap = float(alphas_cumprod[tp]) if tp >= 0 else final
        x0 = (sample - math.sqrt(1 - a) * e) / math.sqrt(a)
        if dc is not None:
            x0 = dc(x0, t_dev[int(t)])
            e = (sample - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e, x0

    t_dev = torch.arange(n_train, device=x.device)  # one copy, not a host-device sync per step
    ets: list[torch.Tensor] = []
    cur_e, cur_sample = 0.0, None
    for c, t in enumerate(int(v) for v in timesteps):
        e = eps_fn(x, t_dev[t])
        if e.shape != x.shape:
            raise ValueError(f"eps_fn: expected an output of shape {tuple(x.shape)}, got {tuple(e.shape)}")
        if c < n_prk:  # pseudo Runge-Kutta (diffusers' step_prk)
            prev_t = t - (0 if c % 2 else ratio // 2)
            base_t = int(timesteps[c // 4 * 4])
            if c % 4 == 0:
                cur_e = cur_e + e / 6
                ets.append(e)
                cur_sample = x
            elif c % 4 in (1, 2):
                cur_e = cur_e + e / 3
            else:
                e = cur_e + e / 6
                cur_e = 0.0
            x, x0 = transfer(cur_sample, base_t, prev_t, e)
        else:  # pseudo linear multistep (diffusers' step_plms)
            prev_t, base_t, sample = t - ratio, t, x
            if c != 1:
                ets = ets[-3:] + [e]
            else:
                prev_t, base_t = t, t + ratio
            if len(ets) == 1 and c == 0:
                cur_sample = x
            elif len(ets) == 1 and c == 1:
                e = (e + ets[-1]) / 2
                sample, cur_sample = cur_sample, None
            elif len(ets) == 2:
                e = (3 * ets[-1] - ets[-2]) / 2
            elif len(ets) == 3:
                e = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
            else:
                e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
            x, x0 = transfer(sample, base_t, prev_t, e)
        if callback is not None:
            callback({"i": c, "t": t_dev[t], "x": x, "x0": x0})
    return x
