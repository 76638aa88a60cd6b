"""The built-in demo: a tiny multi-coil fastMRI-format file made offline in about a second.

A 3-D Shepp-Logan phantom (SigPy) gives distinct slices; each gets a smooth random phase, is
placed in a field of view oversampled 2x along the readout (as in fastMRI, whose recon matrix is
the central crop), multiplied by SigPy birdcage coil sensitivities, Fourier transformed and
corrupted by complex Gaussian noise at a chosen SNR.  The file carries a consistent ISMRMRD
header and the RSS target at the recon matrix, so retrospective undersampling can be scored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medrecon.datasets.fastmri import center_crop, make_ismrmrd_header, write_fastmri
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c

__all__ = ["make_demo_volume", "make_demo_file"]


def make_demo_volume(n_slices: int = 3, coils: int = 8, size: tuple[int, int] = (128, 128),
                     snr: float = 40.0, seed: int = 0) -> dict:
    """k-space ``[S, C, 2H, W]`` (complex64), RSS target ``[S, H, W]`` and the header XML."""
    import sigpy as sp
    import sigpy.mri

    if n_slices < 1 or coils < 1 or min(size) < 16:
        raise ValueError(f"need n_slices >= 1, coils >= 1 and size >= 16, got {n_slices}, "
                         f"{coils}, {size}")
    H, W = size
    rng = np.random.default_rng(seed)
    depth = max(4 * n_slices, 16)
    vol = np.real(sp.shepp_logan((depth, H, W))).astype(np.float32)
    idx = np.linspace(depth * 0.3, depth * 0.7, n_slices).astype(int)
    img = vol[idx]  # [S, H, W]
    # smooth random phase: a few low-order polynomial terms per slice
    yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    phase = np.stack([rng.normal(0, 0.6) * xx + rng.normal(0, 0.6) * yy
                      + rng.normal(0, 0.4) * xx * yy for _ in range(n_slices)])
    img = img * np.exp(1j * phase)
    # readout oversampling: the object fills the central half of the encoded FOV
    He = 2 * H
    full = np.zeros((n_slices, He, W), np.complex64)
    full[:, H // 2:H // 2 + H] = img
    mps = sp.mri.birdcage_maps((coils, He, W), r=1.2).astype(np.complex64)
    x = torch.from_numpy(full[:, None] * mps[None])  # [S, C, He, W]
    k = fft2c(x)
    sigma = float(k.abs().pow(2).mean().sqrt()) / snr
    g = torch.Generator().manual_seed(seed)
    k = k + sigma * torch.randn(k.shape, dtype=torch.complex64, generator=g)
    target = center_crop(rss(ifft2c(k)), (H, W)).numpy().astype(np.float32)
    header = make_ismrmrd_header((He, W, 1), (H, W, 1), (440.0, 220.0, 5.0), (220.0, 220.0, 5.0))
    return {"kspace": k.numpy(), "target": target, "header": header}


def make_demo_file(path, n_slices: int = 3, coils: int = 8, size: tuple[int, int] = (128, 128),
                   snr: float = 40.0, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the demo volume as a fastMRI multi-coil file (train/val style: no mask)."""
    v = make_demo_volume(n_slices, coils, size, snr, seed)
    return write_fastmri(path, v["kspace"], header=v["header"], reconstruction_rss=v["target"],
                         attrs={"acquisition": "AXT2", "patient_id": f"medrecon-demo-{seed}"},
                         overwrite=overwrite)
