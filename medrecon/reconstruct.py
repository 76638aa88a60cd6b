"""``reconstruct``: one entry point for every registered method (classical or diffusion).

Input conventions (checked here, at the boundary, so methods can trust them):

- ``kspace`` is always multi-coil ``[..., C, H, W]`` complex; single-coil data is ``C = 1``
  (``kspace.unsqueeze(-3)``), and the zero-filled/RSS result is then just the magnitude.
- ``mask`` is bool (or 0/1) broadcastable to ``[..., H, W]``; a 1-D column mask is ``[1, W]``.
  k-space off the mask is ignored (multiplied by the mask) so undersampled and fully sampled
  inputs can be passed alike.
- ``smaps`` ``[..., C, H, W]`` are estimated with ESPIRiT from the fully sampled centre when a
  method needs them and none are given (calibration: the fully sampled central lines, <= 24,
  by up to 48 readout rows for 1-D masks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medrecon.physics.coils import espirit
from medrecon.physics.mri import check_mask
from medrecon.registry import get_method, options_to_dict, resolve_options

__all__ = ["ReconResult", "reconstruct", "acs_width", "validate_inputs", "check_not_degenerate"]


@dataclass
class ReconResult:
    """``image`` ``[..., H, W]``: complex coil-combined (SENSE/ESPIRiT methods) or real
    magnitude (RSS zero-filled, SPIRiT-CG without maps).  ``nfe`` = network evaluations."""

    image: torch.Tensor
    method: str
    options: dict[str, Any]
    nfe: int
    seconds: float
    smaps: torch.Tensor | None = field(default=None, repr=False)

    @property
    def magnitude(self) -> torch.Tensor:
        return self.image.abs() if self.image.is_complex() else self.image


def acs_width(mask: torch.Tensor) -> int:
    """Side of the largest fully sampled *centred* block (start ``n//2 - m//2``, the crop used
    by ESPIRiT and SPIRiT calibration): columns for 1-D masks, a square for 2-D masks, over all
    masks of a batch."""
    m = mask.to(torch.bool)
    m = m.reshape(-1, m.shape[-2], m.shape[-1]).all(0)
    H, W = m.shape
    column = H == 1
    best = 0
    for n in range(1, (W if column else min(H, W)) + 1):
        w0 = W // 2 - n // 2
        block = m[:, w0:w0 + n] if column else m[H // 2 - n // 2:H // 2 - n // 2 + n, w0:w0 + n]
        if not block.all():
            break
        best = n
    return best


def validate_inputs(kspace, mask, smaps=None):
    """Check shapes, dtypes and finiteness; return ``(kspace, mask_float)``."""
    if not isinstance(kspace, torch.Tensor) or not kspace.is_complex():
        raise ValueError("kspace must be a complex torch tensor [..., C, H, W] "
                         f"(got {getattr(kspace, 'dtype', type(kspace).__name__)}); "
                         "single-coil k-space needs a coil axis of 1")
    if kspace.ndim < 3:
        raise ValueError(f"kspace must have shape [..., C, H, W], got {tuple(kspace.shape)}")
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("kspace contains NaN or Inf")
    H, W = kspace.shape[-2:]
    m = check_mask(mask.to(kspace.device) if isinstance(mask, torch.Tensor) else mask, (H, W))
    try:
        torch.broadcast_shapes(m.shape[:-2], kspace.shape[:-3])
    except RuntimeError:
        raise ValueError(f"mask leading dims {tuple(m.shape[:-2])} do not broadcast against the "
                         f"k-space slice dims {tuple(kspace.shape[:-3])}") from None
    if smaps is not None:
        if not isinstance(smaps, torch.Tensor) or not smaps.is_complex():
            raise ValueError("smaps must be a complex torch tensor [..., C, H, W]")
        if smaps.shape[-3:] != kspace.shape[-3:]:
            raise ValueError(f"smaps shape {tuple(smaps.shape)} does not match k-space "
                             f"{tuple(kspace.shape)} in [C, H, W]")
    return kspace, m


def check_not_degenerate(y: torch.Tensor, m: torch.Tensor) -> None:
    """Refuse measurements that carry no information (ValueError): a mask (of any slice)
    sampling nothing, or k-space exactly zero on every sampled location of every slice of the
    call.  Methods would return an all-zero image (or a scaled prior sample) with no error.  A
    blank slice among others is valid data (its image is ~0; the methods clamp their scales)."""
    ms = m.reshape(-1, m.shape[-2], m.shape[-1]).flatten(1).any(1)
    if not bool(ms.all()):
        i = int((~ms).nonzero()[0][0])
        where = f" (mask {i} of {ms.numel()})" if ms.numel() > 1 else ""
        raise ValueError(f"mask samples no k-space location{where}; nothing was measured")
    if not bool((y != 0).any()):
        raise ValueError("kspace is all zero on the sampled locations; an all-zero measurement "
                         "has no image to reconstruct")


def estimate_smaps(y: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """ESPIRiT maps from the fully sampled centre of ``y`` (>= 8 central lines, else a ValueError)."""
    acs = acs_width(mask)
    if acs < 8:
        raise ValueError(f"method {method!r} needs coil sensitivities: pass smaps=, or use a "
                         f"mask with >= 8 fully sampled central lines (found {acs})")
    H, W = y.shape[-2:]
    # 1-D masks: every readout row of the ACS columns is calibration data (48 rows suffice)
    calib = (min(H, 48), min(acs, 24)) if mask.shape[-2] == 1 else min(acs, 24)
    return espirit(y, calib_width=calib, kernel_width=min(6, acs))


def reconstruct(kspace: torch.Tensor, mask: torch.Tensor, method: str = "zero-filled", *,
                smaps: torch.Tensor | None = None, seed: int | None = None,
                **options) -> ReconResult:
    """Reconstruct ``kspace`` ``[..., C, H, W]`` sampled on ``mask`` with a registered method."""
    spec = get_method(method)
    opts = resolve_options(spec, options)
    kspace, m = validate_inputs(kspace, mask, smaps)
    y = kspace * m.unsqueeze(-3)
    check_not_degenerate(y, m)
    t0 = time.perf_counter()
    if spec.needs_smaps and smaps is None:
        smaps = estimate_smaps(y, m, method)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=kspace.device).manual_seed(int(seed))
    image, nfe = spec.fn(y, m, smaps, opts, gen)
    seconds = time.perf_counter() - t0
    return ReconResult(image=image, method=method, options=options_to_dict(opts), nfe=int(nfe),
                       seconds=seconds, smaps=smaps)
