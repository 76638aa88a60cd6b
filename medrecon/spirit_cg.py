"""SPIRiT-CG: Cartesian SPIRiT reconstruction with the acquired data kept exactly.

Lustig & Pauly, MRM 64(2):457-471, 2010, "SPIRiT" eqs. [4]-[6] in the noiseless, data-exact form
of Lustig's ``SPIRiT.m`` / ``cgSPIRiT.m``: the full k-space is ``k = y + P_u u`` with ``y`` the
zero-filled acquired data and ``u`` the unacquired samples (``P_u = 1 - M``), and ``u`` minimises
the calibration-consistency error

    || (G - I) (y + P_u u) ||^2    ->    P_u (G-I)^H (G-I) P_u u = - P_u (G-I)^H (G-I) y,

solved by conjugate gradient (`medrecon.linalg.cg`, conjugated inner products).  ``G`` is applied
in the image domain (`medrecon.physics.spirit.SpiritOperator`), so one CG iteration costs one
inverse and one forward FFT over all coils and one per-pixel C x C matrix product.  An optional
Tikhonov term ``reg ||u||^2`` (Lustig's ``ReconTyk``) is added to the normal operator.
"""
from __future__ import annotations

import torch

from .linalg import cg
from .physics.fft import check_complex, fft2c, ifft2c
from .physics.mri import check_mask
from .physics.spirit import (
    LAM_SPIRIT,
    SpiritOperator,
    _check_kernel_width,
    _pair,
    center_block,
    spirit_calibrate,
)

__all__ = ["spirit_cg"]


def _broadcasts_to(lead: torch.Size, target: torch.Size) -> bool:
    """True when leading dims ``lead`` broadcast against ``target`` to exactly ``target``."""
    try:
        return torch.broadcast_shapes(lead, target) == target
    except RuntimeError:
        return False


def spirit_cg(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    kernel: torch.Tensor | None = None,
    calib_width: int | tuple[int, int] = 24,
    kernel_width: int = 7,
    lam: float = LAM_SPIRIT,
    max_iter: int = 30,
    tol: float = 1e-6,
    reg: float = 0.0,
) -> torch.Tensor:
    """SPIRiT reconstruction of undersampled k-space ``[..., C, H, W]``; returns coil images.

    ``kspace [..., C, H, W]`` complex (values off the mask are ignored); ``mask`` bool/0-1
    ``[..., 1, W]`` (column mask) or ``[..., H, W]``, broadcastable to the k-space's
    ``[..., H, W]``.  ``kernel [..., C, C, k, k]`` from `spirit_calibrate`; when omitted it is
    calibrated from the central ``calib_width`` block (int or ``(h, w)``), which must be fully
    sampled.  Acquired samples are returned exactly: ``fft2c(result) == kspace`` on the mask.
    Combine coils with e.g. ``result.abs().square().sum(-3).sqrt()`` (RSS).
    """
    check_complex(kspace, "kspace", min_dim=3)
    H, W = kspace.shape[-2:]
    C = kspace.shape[-3]
    m = check_mask(mask, (H, W)).to(device=kspace.device)
    if not _broadcasts_to(m.shape[:-2], kspace.shape[:-3]):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} must broadcast to the k-space's [..., H, W] = "
            f"{tuple(kspace.shape[:-3]) + (H, W)} (kspace shape {tuple(kspace.shape)}; the coil "
            "axis is not part of the mask)"
        )
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("kspace contains NaN or Inf")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not reg >= 0:
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    m = m.unsqueeze(-3).to(kspace.real.dtype)  # [..., 1, h, W]: broadcast over coils
    y = kspace * m
    if kernel is None:
        size = _pair(calib_width, "calib_width")
        _check_kernel_width(kernel_width)  # report a bad kernel_width before the mask check
        full = torch.ones_like(m).expand(*m.shape[:-2], H, W)
        if not bool((center_block(full * m, size) == 1).all()):
            raise ValueError(
                f"the central calib_width {size} region of mask is not fully sampled; "
                "use a smaller calib_width or pass a calibrated kernel"
            )
        kernel = spirit_calibrate(y, size, kernel_width, lam)
    else:
        check_complex(kernel, "kernel", min_dim=4)
        if kernel.shape[-4:-2] != (C, C):
            raise ValueError(
                f"kernel must have shape [..., {C}, {C}, k, k] for {C} coils, got "
                f"{tuple(kernel.shape)}"
            )
        if not _broadcasts_to(kernel.shape[:-4], kspace.shape[:-3]):
            raise ValueError(
                f"kernel leading dims {tuple(kernel.shape[:-4])} must broadcast to the k-space's "
                f"leading dims {tuple(kspace.shape[:-3])}"
            )
    op = SpiritOperator(kernel.to(device=kspace.device), (H, W))
    un = 1 - m  # P_u

    def normal(u: torch.Tensor) -> torch.Tensor:
        out = un * fft2c(op.normal(ifft2c(un * u)))
        return out + reg * u if reg else out

    rhs = -un * fft2c(op.normal(ifft2c(y)))
    u = cg(normal, rhs, max_iter=max_iter, tol=tol, ndim=3)
    return ifft2c(y + un * u)
