"""CT units (HU <-> linear attenuation) and low-dose sinogram simulation (canonical versions).

``mu = mu_water (1 + HU / 1000)`` with ``mu_water = 0.0192 / mm`` (water at ~70 keV effective
energy), clipped at 0 (nothing attenuates less than vacuum).  Low dose (the usual NDCT -> LDCT
recipe, e.g. Yu et al., Med. Phys. 2012; Zeng et al., Med. Phys. 2015): detected counts
``N = Poisson(I0 exp(-p)) + Normal(0, sigma_e^2)`` (electronic noise), clipped at ``N >= eps``
(default 1 photon, so the log stays finite and ``p`` is capped at ``log(I0 / eps)``), then
``p_low = -log(N / I0)``.  For large counts ``Var(p_low) ~ (I0 e^-p + sigma_e^2) / (I0 e^-p)^2``
(delta method).  `medrecon.datasets.simulate_ct` holds NumPy twins of these for its HDF5
writer; the torch versions here are the reference.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["MU_WATER", "LOWDOSE_EPS", "hu_to_mu", "mu_to_hu", "log_transform",
           "simulate_lowdose"]

MU_WATER = 0.0192  # 1/mm, water at ~70 keV effective energy
LOWDOSE_EPS = 1.0  # photons: detected counts are clipped at this before the log


def _mu_water(mu_water) -> float:
    v = float(mu_water)
    if not v > 0 or not math.isfinite(v):
        raise ValueError(f"mu_water must be a positive finite attenuation in 1/mm, got "
                         f"{mu_water!r}")
    return v


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """Linear attenuation (1/mm) ``mu_water (1 + HU / 1000)``, clipped at 0.

    A torch tensor gives a tensor (same device; float dtype kept, integers -> float32);
    anything else (NumPy arrays, lists, scalars) gives a float64 NumPy array.
    """
    mw = _mu_water(mu_water)
    if isinstance(hu, torch.Tensor):
        h = hu if hu.is_floating_point() else hu.to(torch.float32)
        return (mw * (1.0 + h / 1000.0)).clamp_min(0.0)
    return np.clip(mw * (1.0 + np.asarray(hu, np.float64) / 1000.0), 0.0, None)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """Hounsfield units ``1000 (mu / mu_water - 1)`` (inverse of `hu_to_mu` above -1000 HU)."""
    mw = _mu_water(mu_water)
    if isinstance(mu, torch.Tensor):
        m = mu if mu.is_floating_point() else mu.to(torch.float32)
        return 1000.0 * (m / mw - 1.0)
    return 1000.0 * (np.asarray(mu, np.float64) / mw - 1.0)


def _check_i0(i0, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(i0, torch.Tensor):
        if not i0.is_floating_point() and i0.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"I0 must be a positive number or real tensor, got {i0.dtype}")
        if not (torch.isfinite(i0).all() and (i0 > 0).all()):
            raise ValueError("I0 (incident photons per detector element) must be finite and > 0 "
                             "everywhere")
        try:
            ok = torch.broadcast_shapes(i0.shape, like.shape) == like.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"I0 of shape {tuple(i0.shape)} does not broadcast to the "
                             f"sinogram shape {tuple(like.shape)}")
        return i0.to(device=like.device, dtype=like.dtype)
    v = float(i0)
    if not v > 0 or not math.isfinite(v):
        raise ValueError(f"I0 (incident photons per detector element) must be finite and > 0, "
                         f"got {i0!r}")
    return v


def _check_sino(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")


def log_transform(counts: torch.Tensor, I0) -> torch.Tensor:
    """Line integrals ``-log(counts / I0)``; counts and I0 must be > 0 (clip counts first)."""
    _check_sino(counts, "counts")
    i0 = _check_i0(I0, counts)
    if not bool((counts > 0).all()):
        bad = int((counts <= 0).sum())
        raise ValueError(f"counts must be > 0 for the log transform ({bad} values <= 0); clip "
                         f"them at a small positive floor, e.g. counts.clamp_min({LOWDOSE_EPS})")
    if isinstance(i0, float):
        return math.log(i0) - torch.log(counts)
    return torch.log(i0) - torch.log(counts)


def simulate_lowdose(line_integrals: torch.Tensor, I0, sigma_e: float,
                     generator: torch.Generator, *, eps: float = LOWDOSE_EPS,
                     return_counts: bool = False):
    """Noisy line integrals ``-log(max(Poisson(I0 e^-p) + N(0, sigma_e^2), eps) / I0)``.

    ``I0``: incident photons per element (number, or a tensor broadcastable to the sinogram,
    e.g. a bowtie profile ``[n_detectors]``); ``sigma_e``: electronic-noise std in photons;
    ``generator``: a ``torch.Generator`` on the sinogram's device (the only randomness).
    Returns a tensor like ``line_integrals`` (and the clipped counts if ``return_counts``).
    """
    _check_sino(line_integrals, "line_integrals")
    i0 = _check_i0(I0, line_integrals)
    se = float(sigma_e)
    if not se >= 0 or not math.isfinite(se):
        raise ValueError(f"sigma_e (electronic noise std, photons) must be >= 0, got {sigma_e!r}")
    e = float(eps)
    if not e > 0 or not math.isfinite(e):
        raise ValueError(f"eps (count floor before the log) must be > 0, got {eps!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (seeded by the caller), got "
                         f"{type(generator).__name__}")
    gd, xd = generator.device, line_integrals.device
    if gd.type != xd.type or (gd.index is not None and xd.index is not None
                              and gd.index != xd.index):
        raise ValueError(f"generator is on {generator.device} but line_integrals on "
                         f"{line_integrals.device}; create torch.Generator(device=...) there")
    rate = i0 * torch.exp(-line_integrals)
    counts = torch.poisson(rate, generator=generator)
    if se > 0:
        counts = counts + se * torch.randn(counts.shape, generator=generator,
                                           dtype=counts.dtype, device=counts.device)
    counts = counts.clamp_min(e)
    p = log_transform(counts, i0)
    return (p, counts) if return_counts else p
