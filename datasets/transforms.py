"""`MRITransform`: a raw fastMRI slice -> an undersampled reconstruction problem (k-space, mask,
target, optional ESPIRiT maps), following fastMRI's ``VarNetDataTransform`` conventions.

Conventions (and why):

- Mask seed (``seed``): ``"fname"`` (default) seeds the mask with ``tuple(map(ord, fname))``,
  exactly fastMRI's ``use_seed=True``, so every slice of a volume gets the same mask in every
  epoch and the mask equals ``make_mask(kind, (C, H, W), acceleration, center_fraction,
  seed=tuple(map(ord, fname)))``.  An int gives one mask for every volume; ``None`` draws a
  fresh mask per call (training-time augmentation).  ``mask_kind=None`` uses the file's own
  mask (test/challenge files) or full sampling.
- For 1-D masks the columns outside the acquired window ``[padding_left, padding_right)`` of
  the header are set to False (fastMRI's ``apply_mask(..., padding)``).
- ``kspace`` = file k-space * mask: zero where the mask is False, unchanged where True.  It
  stays on the encoded grid ``[C, H, W]`` (readout oversampled) unless ``crop_kspace=True``,
  which first crops the coil images to the recon matrix and transforms back (``[C, rx, ry]``).
- ``target`` = the file's ``reconstruction_rss`` (``_esc`` single-coil), else the RSS of the
  fully sampled coil images cropped to the recon matrix.
- Normalization: every output (k-space, target) is divided by ``scale``; multiply a
  reconstruction by ``metadata["scale"]`` to return to file units.  ``"percentile"`` (default)
  uses the 99th percentile of the zero-filled RSS magnitude at the recon matrix (known at test
  time; matches `ImageDataset`'s prior normalization), ``"max"`` the file's ``attrs["max"]``
  (fastMRI's volume maximum of the target), ``"none"`` 1.
- ``estimate_maps``: ESPIRiT maps ``[C, H, W]`` from the undersampled k-space's ACS block.

Outputs have fixed shapes per dataset, so torch's default collate works; `collate` also
batches volumes of different sizes (as lists).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from medrecon.datasets.fastmri import center_crop
from medrecon.physics.coils import espirit, rss
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import KINDS_1D, sample_mask

__all__ = ["MRITransform", "fname_seed", "collate", "percentile_scale"]


def fname_seed(fname: str) -> tuple[int, ...]:
    """fastMRI's per-volume mask seed: ``tuple(map(ord, fname))``."""
    return tuple(map(ord, fname))


def percentile_scale(mag: torch.Tensor, q: float = 99.0) -> float:
    """``q``-th percentile of a magnitude image (falls back to its max, then 1 if all zero)."""
    a = mag.detach().abs().cpu().numpy().ravel()
    s = float(np.percentile(a, q)) if a.size else 0.0
    if not s > 0:
        s = float(a.max()) if a.size else 0.0
    return s if s > 0 and math.isfinite(s) else 1.0


def _central_run(cols: torch.Tensor) -> int:
    """Length of the run of sampled columns around the centre ``W // 2``."""
    c = cols.reshape(-1).bool().tolist()
    mid = len(c) // 2
    if not c[mid]:
        return 0
    lo, hi = mid, mid
    while lo > 0 and c[lo - 1]:
        lo -= 1
    while hi < len(c) - 1 and c[hi + 1]:
        hi += 1
    return hi - lo + 1


class MRITransform:
    """Callable on `FastMRISliceDataset` raw items; see the module docstring."""

    def __init__(self, mask_kind: str | None = "random", acceleration: float = 4,
                 center_fraction: float = 0.08, seed: int | str | None = "fname",
                 normalize: str = "percentile", estimate_maps: bool = False,
                 crop_kspace: bool = False, target_from_file: bool = True,
                 calib_width: int = 24, kernel_width: int = 6):
        if normalize not in ("percentile", "max", "none"):
            raise ValueError(f"normalize must be 'percentile', 'max' or 'none', got {normalize!r}")
        if not (seed is None or seed == "fname" or isinstance(seed, int)):
            raise ValueError(f"seed must be None, an int or 'fname', got {seed!r}")
        self.mask_kind, self.acceleration = mask_kind, acceleration
        self.center_fraction = center_fraction
        self.seed, self.normalize, self.estimate_maps = seed, normalize, estimate_maps
        self.crop_kspace, self.target_from_file = crop_kspace, target_from_file
        self.calib_width, self.kernel_width = calib_width, kernel_width

    def _mask(self, shape, raw, meta) -> tuple[torch.Tensor, tuple[int, int]]:
        H, W = shape[-2:]
        if self.mask_kind is None:
            if "mask" in raw:
                m = raw["mask"].bool().reshape(1, W)
                n_low = meta.get("num_low_frequencies") or _central_run(m)
                return m, (H, int(n_low))
            return torch.ones(1, W, dtype=torch.bool), (H, W)
        seed = fname_seed(meta["fname"]) if self.seed == "fname" else self.seed
        sm = sample_mask(self.mask_kind, shape, self.acceleration, self.center_fraction, seed)
        m = sm.mask.clone()
        if self.mask_kind in KINDS_1D and not self.crop_kspace:
            m[..., :meta["padding_left"]] = False
            m[..., meta["padding_right"]:] = False
        return m, sm.acs_shape

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        k = raw["kspace"].to(torch.complex64)
        if k.ndim == 2:
            k = k[None]  # single-coil: C = 1
        meta = dict(raw["metadata"])
        rsize = tuple(meta["recon_size"])
        if self.crop_kspace:
            k = fft2c(center_crop(ifft2c(k), rsize))
        mask, acs = self._mask(k.shape, raw, meta)
        ku = k * mask
        if self.target_from_file and "target" in raw:
            target = raw["target"].float()
        else:
            target = center_crop(rss(ifft2c(k)), rsize).float()
        if self.normalize == "percentile":
            scale = percentile_scale(center_crop(rss(ifft2c(ku)), rsize))
        elif self.normalize == "max":
            scale = meta["max"] if meta["max"] > 0 else float(target.max())
            scale = scale if scale > 0 else 1.0
        else:
            scale = 1.0
        out = {"kspace": ku / scale, "mask": mask, "target": target / scale}
        if self.estimate_maps:
            if acs[1] < 1:
                raise ValueError(f"{meta['fname']}: estimate_maps needs a fully sampled centre "
                                 "(ACS columns); the mask has none")
            cw = (min(acs[0], self.calib_width), min(acs[1], self.calib_width))
            kw = min(self.kernel_width, *cw)
            out["maps"] = espirit(ku, calib_width=cw, kernel_width=kw)
        meta.update(scale=float(scale), num_low_frequencies=int(acs[1]),
                    acceleration=float(mask.numel() / max(int(mask.sum()), 1)))
        out["metadata"] = meta
        return out


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape (lists otherwise); ``metadata`` becomes a list of dicts."""
    out: dict[str, Any] = {"metadata": [b["metadata"] for b in batch]}
    for key in batch[0]:
        if key == "metadata":
            continue
        vals = [b[key] for b in batch]
        same = all(v.shape == vals[0].shape for v in vals)
        out[key] = default_collate(vals) if same else vals
    return out
