"""Coil sensitivities and coil combination: ESPIRiT maps (`espirit`, fast, SigPy-equal: see
physics/espirit_calib.py), root-sum-of-squares, SENSE combination, maps from a sampled mask."""
from __future__ import annotations

import torch

from .espirit_calib import espirit
from .fft import check_complex
from .masks import acs_width, calibration_region

__all__ = ["espirit", "rss", "sense_combine", "estimate_smaps"]


def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over ``dim`` (fastMRI's ``rss`` on complex tensors)."""
    return x.abs().pow(2).sum(dim).sqrt()


def sense_combine(coil_images: torch.Tensor, smaps: torch.Tensor) -> torch.Tensor:
    """``sum_c conj(S_c) x_c``: the SENSE coil combination ``[..., H, W]``."""
    check_complex(coil_images, "coil_images", min_dim=3)
    check_complex(smaps, "smaps", min_dim=3)
    if coil_images.shape[-3:] != smaps.shape[-3:]:
        raise ValueError(
            f"coil_images {tuple(coil_images.shape)} and smaps {tuple(smaps.shape)} must agree "
            "in their last three dims [C, H, W]"
        )
    return (smaps.conj() * coil_images).sum(-3)


def estimate_smaps(y: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """ESPIRiT maps from the fully sampled centre of ``y`` sampled on ``mask`` (>= 8 central lines,
    else a ValueError naming ``method``, the reconstruction that needs them)."""
    acs = acs_width(mask)
    if acs < 8:
        raise ValueError(f"method {method!r} needs coil sensitivities: pass smaps=, or use a "
                         f"mask with >= 8 fully sampled central lines (found {acs})")
    return espirit(y, calib_width=calibration_region(mask, y.shape[-2]), kernel_width=min(6, acs))
