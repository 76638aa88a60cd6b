"""Image-quality metrics with fastMRI's exact conventions (``fastmri.evaluate``).

- Metrics are computed on magnitude *volumes* ``[S, H, W]`` (a single image ``[H, W]`` is a
  volume of one slice), as the fastMRI leaderboard does.
- NMSE = ||gt - pred||^2 / ||gt||^2 over the whole volume.
- PSNR and SSIM use ``data_range = max of the target volume`` (not max - min, not per slice).
- SSIM is scikit-image's ``structural_similarity`` per slice with its defaults (7x7 uniform window,
  K1 = 0.01, K2 = 0.03), averaged over slices.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["nmse", "psnr", "ssim", "evaluate"]


def _as_volumes(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, a in (("gt", gt), ("pred", pred)):
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
            a = (a.abs() if a.is_complex() else a).numpy()
        a = np.asarray(a)
        if np.iscomplexobj(a):
            a = np.abs(a)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"{name} must be an image [H, W] or a volume [S, H, W], "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
        arrays.append(a.astype(np.float64))
    g, p = arrays
    if g.shape != p.shape:
        raise ValueError(f"gt shape {g.shape} and pred shape {p.shape} must be equal")
    return g, p


def nmse(gt, pred) -> float:
    """Normalised MSE over the volume."""
    g, p = _as_volumes(gt, pred)
    return float(np.linalg.norm(g - p) ** 2 / np.linalg.norm(g) ** 2)


def psnr(gt, pred, maxval: float | None = None) -> float:
    """PSNR in dB with ``data_range`` = max of the target volume unless ``maxval`` is given."""
    g, p = _as_volumes(gt, pred)
    maxval = g.max() if maxval is None else maxval
    return float(peak_signal_noise_ratio(g, p, data_range=maxval))


def ssim(gt, pred, maxval: float | None = None) -> float:
    """Mean per-slice SSIM (scikit-image, 7x7 window) with ``data_range`` = max of the target."""
    g, p = _as_volumes(gt, pred)
    maxval = g.max() if maxval is None else maxval
    if min(g.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {g.shape[-2:]}")
    return float(np.mean([structural_similarity(a, b, data_range=maxval) for a, b in zip(g, p)]))


def evaluate(gt, pred) -> dict[str, float]:
    """``{"nmse", "psnr", "ssim"}`` of ``pred`` against ``gt`` (fastMRI conventions)."""
    return {"nmse": nmse(gt, pred), "psnr": psnr(gt, pred), "ssim": ssim(gt, pred)}
