"""UniPC: unified predictor-corrector multistep solver, data prediction (Zhao et al., NeurIPS 2023).

UniP-p (Alg. 2) predicts x_t from the last p x0-predictions m_i with exponential-integrator weights
(B(h) = h for "bh1", e^h - 1 for "bh2", Eq. 5-6); UniC (Alg. 1) then corrects x_t with the model
output at the predicted x_t (the evaluation the next step needs anyway, so the order rises by one at no
extra model call).  Coefficients rho solve R rho = b with R_ij = r_j^(i-1), b_i = h phi_{i+1}(h) i! / B(h)
(Eq. 8).  Step sequence, order warm-up, ``lower_order_final`` and the final sigma 0 follow diffusers'
UniPCMultistepScheduler defaults (solver_order 2, bh2, predict_x0, "linspace").
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import log_snr_grid, predict_x0


def _coeffs(rks: list[float], h: float, order: int, variant: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    r = np.array(rks + [1.0])
    R, b, fact = [], [], 1
    for i in range(1, order + 1):
        R.append(r ** (i - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return np.array(R), np.array(b), h_phi_1, b_h


def unipc(eps_fn, x, timesteps, alphas_cumprod, *, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True, use_corrector: bool = True, dc=None, callback=None,
          generator=None) -> torch.Tensor:
    """UniPC over descending integer ``timesteps`` to sigma = 0 (x0)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant: expected 'bh1' or 'bh2', got {variant!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"order: expected 1, 2 or 3, got {order}")
    ts, t_dev, al, si, lam = log_snr_grid(timesteps, alphas_cumprod, x.device)
    n = len(ts)
    ms: list[torch.Tensor] = []
    last_x, this_order = None, 1
    for i, t in enumerate(ts):
        tt = t_dev[i]
        x0, _ = predict_x0(eps_fn, x, x, tt, al[i], si[i], dc)
        if use_corrector and i > 0:  # UniC with the fresh evaluation at the predicted x
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, this_order)]
            R, b, h_phi_1, b_h = _coeffs(rks, h, this_order, variant)
            rhos = np.array([0.5]) if this_order == 1 else np.linalg.solve(R, b)
            m0 = ms[-1]
            corr = sum(float(rhos[k - 1]) * (ms[-1 - k] - m0) / rks[k - 1] for k in range(1, this_order))
            x = (si[i] / si[i - 1]) * last_x - al[i] * h_phi_1 * m0 - al[i] * b_h * (corr + float(rhos[-1]) * (x0 - m0))
        ms = (ms + [x0])[-order:]
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, len(ms))
        last_x = x
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, this_order)]
        R, b, h_phi_1, b_h = _coeffs(rks, h, this_order, variant)
        m0 = ms[-1]
        x = (si[i + 1] / si[i]) * x - al[i + 1] * h_phi_1 * m0
        if this_order > 1:
            rhos = np.array([0.5]) if this_order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            pred = sum(float(rhos[k - 1]) * (ms[-1 - k] - m0) / rks[k - 1] for k in range(1, this_order))
            x = x - al[i + 1] * b_h * pred
        if callback is not None:
            callback({"i": i, "t": tt, "x": x, "x0": x0})
    return x
