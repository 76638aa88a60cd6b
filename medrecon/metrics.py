"""Image-quality metrics with fastMRI's exact conventions (``fastmri.evaluate``).

- Metrics are computed on magnitude *volumes* ``[S, H, W]`` (a single image ``[H, W]`` is a
  volume of one slice), as the fastMRI leaderboard does.
- NMSE = ||gt - pred||^2 / ||gt||^2 over the whole volume.
- PSNR and SSIM use ``data_range = max of the target volume`` (not max - min, not per slice).
- SSIM is scikit-image's ``structural_similarity`` per slice with its defaults (7x7 uniform window,
  K1 = 0.01, K2 = 0.03), averaged over slices.

`evaluate` never returns NaN or Infinity (records are written as strict JSON): a metric that is
undefined on the data -- all three when the reference is all zero (or its maximum <= 0, so
``data_range`` is not positive), PSNR when the prediction equals the reference (infinite), SSIM
on images smaller than its 7x7 window -- is ``None`` and ``"reason"`` says why.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["nmse", "psnr", "ssim", "evaluate", "summary"]


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


def evaluate(gt, pred) -> dict[str, float | None | str]:
    """``{"nmse", "psnr", "ssim"}`` of ``pred`` against ``gt`` (fastMRI conventions); a metric
    undefined on this data is ``None`` and the key ``"reason"`` says why (module docstring).
    Every value is finite, so ``json.dumps(..., allow_nan=False)`` always works."""
    g, p = _as_volumes(gt, pred)
    out: dict[str, float | None] = {"nmse": None, "psnr": None, "ssim": None}
    why: list[str] = []
    if not g.any():
        why.append("reference is all zero")
    else:
        out["nmse"] = nmse(g, p)
    if g.any() and g.max() <= 0:
        why.append(f"reference maximum is {g.max():.4g} <= 0 (data_range = max of the reference)")
    elif g.any():
        if np.array_equal(g, p):
            why.append("prediction equals the reference (PSNR is infinite)")
        else:
            out["psnr"] = psnr(g, p)
        if min(g.shape[-2:]) < 7:
            why.append(f"images of {g.shape[-2:]} pixels are smaller than the 7x7 SSIM window")
        else:
            out["ssim"] = ssim(g, p)
    for k, v in out.items():  # overflow guards (e.g. values near the float64 limit)
        if v is not None and not np.isfinite(v):
            out[k] = None
            why.append(f"{k} is not finite on this data")
    return {**out, "reason": "; ".join(why)} if why else out


def fmt_metric(value, spec: str, width: int = 0) -> str:
    """``value`` formatted with ``spec`` (right-aligned in ``width``), ``n/a`` when undefined."""
    text = "n/a" if value is None else format(value, spec)
    return text.rjust(width)


def summary(m: dict) -> str:
    """One line of an `evaluate` result, ``n/a`` for an undefined metric (with the reason)."""
    def f(k, fmt):
        return "n/a" if m.get(k) is None else format(m[k], fmt)

    line = f"PSNR {f('psnr', '.2f')} dB  SSIM {f('ssim', '.4f')}  NMSE {f('nmse', '.4f')}"
    return f"{line} ({m['reason']})" if m.get("reason") else line
