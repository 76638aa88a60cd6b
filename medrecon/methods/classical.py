"""Classical reconstructions: what diffusion must beat, and cheap sampler initialisations
(importing this module registers them).

- ``zero-filled``: inverse FFT of the masked k-space, combined by root-sum-of-squares (or by
  ``S^H`` when maps are given).
- ``cg-sense``: CG on the normal equations ``(A^H A + lam I) x = A^H y`` with A = M F S
  (Pruessmann et al., MRM 2001), conjugated inner products, zero start; few iterations act as
  regularisation.
- ``l1-wavelet``: ``min ||A x - y||^2 / 2 + lamda ||Psi x||_1``, SigPy's
  ``mri.app.L1WaveletRecon`` (Daubechies-4 wavelets, FISTA) in PyTorch, batched over slices
  (`medrecon.l1_wavelet`).  k-space is scaled so each slice's zero-filled SENSE image has
  maximum 1, so ``lamda`` is relative to the image scale.
- ``spirit-cg``: SPIRiT with the acquired data kept exactly (Lustig & Pauly, MRM 2010),
  `medrecon.spirit_cg`; coils combined by ``S^H`` when maps are given, else RSS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from medrecon.linalg import cg
from medrecon.physics.coils import rss, sense_combine
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import acs_width
from medrecon.physics.mri import MultiCoilMRI
from medrecon.physics.spirit import LAM_SPIRIT
from medrecon.registry import register_method

__all__ = ["ZeroFilledOptions", "CGSenseOptions", "L1WaveletOptions", "SpiritCGOptions"]


@dataclass
class ZeroFilledOptions:
    pass


@register_method("zero-filled", ZeroFilledOptions,
                 "inverse FFT of the zero-filled k-space, RSS (or S^H with maps) coil combination")
def zero_filled(kspace, mask, smaps, opts, generator):
    coil_images = ifft2c(kspace)
    if smaps is not None:
        return sense_combine(coil_images, smaps), 0
    return rss(coil_images), 0


@dataclass
class CGSenseOptions:
    max_iter: int = 10
    lam: float = 0.0
    tol: float = 0.0


@register_method("cg-sense", CGSenseOptions,
                 "CG-SENSE: conjugate gradient on (A^H A + lam I) x = A^H y, ESPIRiT maps",
                 needs_smaps=True)
def cg_sense(kspace, mask, smaps, opts, generator):
    if opts.max_iter < 1:
        raise ValueError(f"cg-sense option max_iter must be >= 1, got {opts.max_iter}")
    if opts.lam < 0:
        raise ValueError(f"cg-sense option lam must be >= 0, got {opts.lam}")
    A = MultiCoilMRI(smaps, mask)
    rhs = A.adjoint(kspace)
    lam = float(opts.lam)
    normal = A.normal if lam == 0 else (lambda x: A.normal(x) + lam * x)
    return cg(normal, rhs, max_iter=opts.max_iter, tol=opts.tol), 0


@dataclass
class L1WaveletOptions:
    lamda: float = 1e-3
    max_iter: int = 50
    wave_name: str = "db4"


@register_method("l1-wavelet", L1WaveletOptions,
                 "L1-wavelet CS (SigPy's L1WaveletRecon in PyTorch: db4, FISTA), ESPIRiT maps",
                 needs_smaps=True)
def l1_wavelet(kspace, mask, smaps, opts, generator):
    from medrecon.l1_wavelet import l1_wavelet_recon

    if opts.lamda < 0 or opts.max_iter < 1:
        raise ValueError("l1-wavelet options: lamda must be >= 0 and max_iter >= 1")
    zf = MultiCoilMRI(smaps, mask).adjoint(kspace).abs().amax(dim=(-2, -1))
    scale = torch.where(zf > 0, zf, torch.ones_like(zf))[..., None, None]  # per slice
    x = l1_wavelet_recon(kspace / scale[..., None], mask, smaps, opts.lamda, opts.max_iter,
                         opts.wave_name)
    return x * scale, 0


@dataclass
class SpiritCGOptions:
    calib_width: int | None = None
    kernel_width: int = 7
    lam: float = LAM_SPIRIT
    max_iter: int = 30
    tol: float = 1e-6
    reg: float = 0.0


@register_method("spirit-cg", SpiritCGOptions,
                 "SPIRiT-CG: k-space self-consistency with acquired data kept exactly")
def spirit_cg_method(kspace, mask, smaps, opts, generator):
    from medrecon.spirit_cg import spirit_cg

    cw = opts.calib_width
    if cw is None:
        cw = min(acs_width(mask), 24)
        if cw < opts.kernel_width:
            raise ValueError(f"spirit-cg needs >= kernel_width={opts.kernel_width} fully sampled "
                             f"central lines for calibration, the mask has {cw}")
    coils = spirit_cg(kspace, mask, calib_width=cw, kernel_width=opts.kernel_width, lam=opts.lam,
                      max_iter=opts.max_iter, tol=opts.tol, reg=opts.reg)
    if smaps is not None:
        return sense_combine(coils, smaps), 0
    return rss(coils), 0
