"""Coil sensitivities: ESPIRiT calibration (Uecker et al., MRM 2014) and coil combination.

`espirit` follows SigPy's `mri.app.EspiritCalib` (same calibration region, kernels, scaling,
phase reference and crop) so maps agree with it, but is batched over any leading (slice) dims,
runs on whatever device the k-space is on, and avoids SigPy's two heavy steps:

- SigPy inverse-FFTs every null-space-complement kernel to full size and accumulates the per-pixel
  Gram matrix ``sum_k v_k v_k^H`` (one full-size FFT per kernel and coil).  That Gram matrix is
  the inverse FFT of the kernels' coil-by-coil cross-correlation, which has only
  ``(2 kw - 1)^2`` taps: we form it in k-space with one small einsum and do ``C^2`` full-size
  inverse FFTs instead of ``n_kernels * C``.
- SigPy runs 100 power iterations per pixel; we take the leading eigenvector of the Hermitian
  ``C x C`` matrices with batched ``torch.linalg.eigh`` (exact; chunked over pixels to bound
  memory).

Maps are normalised to unit norm over coils, given the phase of the first coil as reference
(first coil real and non-negative) and zeroed where the leading eigenvalue is <= ``crop``.
"""
from __future__ import annotations

import math

import torch

from .fft import check_complex, ifft2c
from .masks import acs_width, calibration_region

__all__ = ["espirit", "rss", "sense_combine", "estimate_smaps"]


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SigPy/fastMRI-centred crop of the last two dims (start ``n//2 - m//2``)."""
    H, W = x.shape[-2:]
    h0, w0 = H // 2 - size[0] // 2, W // 2 - size[1] // 2
    return x[..., h0:h0 + size[0], w0:w0 + size[1]]


def _check_args(kspace, calib_width, kernel_width, thresh, crop):
    check_complex(kspace, "kspace", min_dim=3)
    H, W = kspace.shape[-2:]
    cw = (calib_width, calib_width) if isinstance(calib_width, int) else tuple(calib_width)
    if len(cw) != 2 or not all(isinstance(c, int) and c >= 1 for c in cw) or cw[0] > H \
            or cw[1] > W:
        raise ValueError(
            f"calib_width must be an int in [1, min(H, W)] = [1, {min(H, W)}] or a pair "
            f"(h <= {H}, w <= {W}), got {calib_width}"
        )
    if not isinstance(kernel_width, int) or kernel_width < 1 or kernel_width > min(cw):
        raise ValueError(
            f"kernel_width must be an int in [1, calib_width={min(cw)}], got {kernel_width}"
        )
    if not 0 <= thresh < 1:
        raise ValueError(f"thresh must be in [0, 1), got {thresh}")
    if not 0 <= crop < 1:
        raise ValueError(f"crop must be in [0, 1), got {crop}")
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("kspace contains NaN or Inf")
    return cw


def _gram_kspace(kspace: torch.Tensor, calib_width: tuple[int, int], kw: int,
                 thresh: float) -> torch.Tensor:
    """Per-batch coil cross-correlation of the retained ESPIRiT kernels, ``[..., C, C, L, L]``.

    ``L = 2 kw - 1``; the zero shift sits at index ``kw - 1``.
    """
    C = kspace.shape[-3]
    calib = _center_crop(kspace, calib_width).to(torch.complex128)
    # Hankel calibration matrix: rows are kw x kw x C neighbourhoods (SigPy's array_to_blocks)
    blocks = calib.unfold(-2, kw, 1).unfold(-2, kw, 1)  # [..., C, nb, nb, kw, kw]
    nb = blocks.shape[-3] * blocks.shape[-4]
    lead = blocks.shape[:-5]
    mat = blocks.movedim(-5, -3).reshape(*lead, nb, C * kw * kw)
    _, s, vh = torch.linalg.svd(mat, full_matrices=False)
    keep = (s > thresh * s[..., :1]).to(vh.real.dtype)  # [..., K]
    kernels = (vh * keep.unsqueeze(-1)).reshape(*lead, -1, C, kw, kw)
    L = 2 * kw - 1
    kf = torch.fft.fft2(kernels, s=(L, L))  # [..., K, C, L, L]
    gram = torch.einsum("...kcuv,...kduv->...cduv", kf, kf.conj())
    gram = torch.fft.ifft2(gram)  # circular cross-correlation, no wrap (support 2kw-1)
    return torch.roll(gram, shifts=(kw - 1, kw - 1), dims=(-2, -1))


def espirit(
    kspace: torch.Tensor,
    calib_width: int = 24,
    kernel_width: int = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    chunk: int = 1 << 15,
    return_eigenvalue: bool = False,
):
    """ESPIRiT sensitivity maps ``[..., C, H, W]`` from k-space ``[..., C, H, W]``.

    The central ``calib_width x calib_width`` block (or ``(h, w)`` block, e.g. all readout rows
    by the ACS columns of a 1-D mask) must be fully sampled.  ``thresh`` keeps
    kernels with singular value > thresh * max; ``crop`` zeroes maps whose eigenvalue is <= crop.
    With ``return_eigenvalue`` also returns the leading eigenvalue map ``[..., H, W]``.
    ``chunk`` pixels go to one batched ``eigh`` call: cuSOLVER's batched Hermitian solver
    (torch 2.11, H200) fails with an internal error at 65536 matrices, works at 32768.
    """
    cw = _check_args(kspace, calib_width, kernel_width, thresh, crop)
    *lead, C, H, W = kspace.shape
    kw = kernel_width
    gram = _gram_kspace(kspace, cw, kw, thresh).to(kspace.dtype)
    L = 2 * kw - 1
    canvas = torch.zeros(*lead, C, C, H, W, dtype=kspace.dtype, device=kspace.device)
    h0, w0 = H // 2 - (kw - 1), W // 2 - (kw - 1)
    # the Gram kernel may be wider than the image for tiny images: keep the part that fits
    hs, ws = max(0, -h0), max(0, -w0)
    he, we = min(L, H - h0), min(L, W - w0)
    canvas[..., h0 + hs:h0 + he, w0 + ws:w0 + we] = gram[..., hs:he, ws:we]
    # SigPy's per-pixel Gram sum_k v_k v_k^H scaled by H W / kw^2 (see module docstring)
    aha = ifft2c(canvas) * (math.sqrt(H * W) / kw**2)  # [..., C, C, H, W]
    aha = aha.movedim(-4, -1).movedim(-4, -1)  # [..., H, W, C(row), C(col)]
    aha = 0.5 * (aha + aha.conj().transpose(-1, -2))  # exact Hermitian for eigh
    flat = aha.reshape(-1, C, C)
    vecs = torch.empty(flat.shape[0], C, dtype=kspace.dtype, device=kspace.device)
    vals = torch.empty(flat.shape[0], dtype=kspace.real.dtype, device=kspace.device)
    for i in range(0, flat.shape[0], chunk):
        ev, evec = torch.linalg.eigh(flat[i:i + chunk])
        vals[i:i + chunk] = ev[:, -1]
        vecs[i:i + chunk] = evec[:, :, -1]
    maps = vecs.reshape(*lead, H, W, C).movedim(-1, -3)  # [..., C, H, W]
    eig = vals.reshape(*lead, H, W)
    maps = maps * torch.sgn(maps[..., :1, :, :]).conj()  # first coil real, >= 0
    maps = maps * (eig > crop).unsqueeze(-3)
    return (maps, eig) if return_eigenvalue else maps


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
