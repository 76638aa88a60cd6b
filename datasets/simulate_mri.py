"""Realistic multi-coil brain MRI simulator writing fastMRI-format files.

Per volume (one seeded generator, so volume ``i`` of a dataset is reproducible on its own):
contiguous axial slices of the anatomical source (`medrecon.datasets.anatomy`) posed by one
random augmentation (flip, rotation, scale, shift, elastic warp), a random MR contrast
(T1/T2/PD/FLAIR-like signal equation), a smooth random phase, 2x readout oversampling as in
fastMRI (the object fills the central half of the encoded readout FOV; the recon matrix is the
central crop), a random coil array, centered orthonormal FFT (`fft2c`) and complex Gaussian
noise.  The target is fastMRI's: RSS of the inverse FFT of the (noisy) k-space, center-cropped.

SNR (``snr``) is defined on the whole volume as ``rms(k_clean) / sigma``, where ``rms`` runs
over every slice, coil and k-space sample of the noise-free data and the noise is circular
complex Gaussian with ``E|n|^2 = sigma^2`` (real and imaginary parts each of variance
``sigma^2 / 2``).  The FFT is orthonormal, so the same ratio holds for the coil images over the
encoded FOV; inside the object the image SNR is higher by about sqrt(FOV area / object area).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medrecon.datasets.anatomy import contrast_params, mix_contrast, random_tissue_slices
from medrecon.datasets.fastmri import center_crop, make_ismrmrd_header, write_fastmri
from medrecon.datasets.outputs import plan_outputs
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c

__all__ = ["coil_maps", "smooth_phase", "volume_seed", "simulate_mri_volume",
           "simulate_mri_dataset", "mri_file_name"]

ACQUISITION = {"t1": "AXT1", "t2": "AXT2", "pd": "AXPD", "flair": "AXFLAIR"}


def volume_seed(seed: int, index: int) -> int:
    """Seed of volume ``index`` of a dataset made with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def mri_file_name(seed: int, index: int) -> str:
    return f"sim_mri_s{int(seed)}_{int(index):05d}.h5"


def _draw(value, rng: np.random.Generator, integer: bool = False):
    """A number, or a ``(low, high)`` range drawn uniformly (inclusive for integers)."""
    if isinstance(value, (tuple, list)):
        lo, hi = value
        return int(rng.integers(lo, hi + 1)) if integer else float(rng.uniform(lo, hi))
    return value


def coil_maps(n_coils: int, shape: tuple[int, int], object_size: tuple[int, int] | None = None,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Sensitivities ``[C, He, W]`` (complex64) of a ring of loops around the object,
    normalised so that ``sum_c |s_c|^2 = 1`` at every pixel.

    SigPy's ``birdcage_maps`` model (|s| ~ 1/r of a wire, phase = azimuth + coil phase), with
    coordinates scaled to the object (``object_size``, the recon matrix, default ``shape``)
    rather than the oversampled FOV, and, when ``rng`` is given, a random ring rotation, radius
    (1.1-1.5 object half-widths), ellipticity, out-of-plane distance and per-coil gain/phase.
    """
    He, W = shape
    oh, ow = object_size or shape
    if rng is None:
        rot, radius, ell, dz = 0.0, 1.3, 1.0, 0.3
        gain, phs = np.ones(n_coils), np.zeros(n_coils)
    else:
        rot, radius = rng.uniform(0, 2 * np.pi), rng.uniform(1.1, 1.5)
        ell, dz = rng.uniform(0.9, 1.1), rng.uniform(0.2, 0.5)
        gain, phs = rng.uniform(0.8, 1.2, n_coils), rng.uniform(-np.pi, np.pi, n_coils)
    y = (np.arange(He) - He / 2)[:, None] / (oh / 2)
    x = (np.arange(W) - W / 2)[None, :] / (ow / 2)
    out = np.empty((n_coils, He, W), np.complex128)
    for c in range(n_coils):
        a = rot + 2 * np.pi * c / n_coils
        dy, dx = y - radius * ell * np.sin(a), x - radius / ell * np.cos(a)
        r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
        out[c] = gain[c] / r * np.exp(1j * (np.arctan2(dx, -dy) - a + phs[c]))
    out /= np.sqrt((np.abs(out) ** 2).sum(0))
    return out.astype(np.complex64)


def smooth_phase(rng: np.random.Generator, n_slices: int, size: tuple[int, int],
                 strength: float = 1.0) -> np.ndarray:
    """Smooth random phase ``[S, H, W]`` (radians): a per-volume low-order polynomial and a
    Gaussian-smoothed random field (B0/receiver-like), plus a small per-slice variation."""
    from scipy import ndimage

    H, W = size
    y, x = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    basis = np.stack([x, y, x * y, x ** 2 - y ** 2])
    coef = rng.normal(0, [0.8, 0.8, 0.4, 0.3])
    field = ndimage.gaussian_filter(rng.standard_normal(size), 0.15 * max(size), mode="wrap")
    field *= 0.5 / (field.std() + 1e-12)
    base = np.tensordot(coef, basis, axes=1) + field
    out = np.stack([base + np.tensordot(rng.normal(0, [0.1, 0.1, 0.05, 0.05]), basis, axes=1)
                    + rng.uniform(-np.pi, np.pi) for _ in range(n_slices)])
    return (strength * out).astype(np.float32)


def simulate_mri_volume(n_slices: int = 4, coils=8, size: tuple[int, int] = (128, 128),
                        snr=30.0, seed: int = 0, contrast: str = "random",
                        source: str = "auto", augment: bool = True) -> dict:
    """One simulated multi-coil volume.

    ``coils`` and ``snr`` are numbers or ``(low, high)`` ranges drawn per volume; ``snr=None``
    (or inf) is noise-free.  Returns ``kspace [S, C, 2H, W]`` complex64, ``target [S, H, W]``
    float32 (RSS, center crop), ``header`` (ISMRMRD XML), ``maps [C, 2H, W]``, ``image
    [S, 2H, W]`` (noise-free complex object), ``sigma`` (noise std) and file ``attrs``.
    """
    H, W = (int(s) for s in size)
    if n_slices < 1 or min(H, W) < 16:
        raise ValueError(f"need n_slices >= 1 and size >= 16, got {n_slices} and {(H, W)}")
    rng = np.random.default_rng(seed)
    n_coils = _draw(coils, rng, integer=True)
    snr_v = _draw(snr, rng)
    if n_coils < 1:
        raise ValueError(f"coils must be >= 1, got {coils}")
    if snr_v is not None and not snr_v > 0:
        raise ValueError(f"snr must be > 0 (or None for noise-free), got {snr}")
    tissues, geo = random_tissue_slices(rng, n_slices, (H, W), source, augment)
    params = contrast_params(contrast, rng)
    mag = mix_contrast(tissues, params)
    obj = mag * np.exp(1j * smooth_phase(rng, n_slices, (H, W)))
    He = 2 * H
    image = np.zeros((n_slices, He, W), np.complex64)
    image[:, H // 2:H // 2 + H] = obj
    maps = coil_maps(n_coils, (He, W), (H, W), rng)
    k = fft2c(torch.from_numpy(image[:, None] * maps[None]))
    sigma, noise_seed = 0.0, int(rng.integers(2 ** 62))
    if snr_v is not None and np.isfinite(snr_v):
        # rms(k_clean)^2 = mean(|image|^2) / C by Parseval, as sum_c |s_c|^2 = 1
        sigma = float(np.sqrt(np.mean(np.abs(image) ** 2) / n_coils)) / snr_v
        g = torch.Generator().manual_seed(noise_seed)  # complex randn: E|n|^2 = 1
        k.add_(torch.randn(k.shape, dtype=torch.complex64, generator=g), alpha=sigma)
    target = center_crop(rss(ifft2c(k)), (H, W)).numpy().astype(np.float32)
    pix, thick = geo["pixel_mm"], geo["thickness_mm"]
    header = make_ismrmrd_header((He, W, 1), (H, W, 1), (He * pix, W * pix, thick),
                                 (H * pix, W * pix, thick))
    attrs = {"acquisition": ACQUISITION[params["kind"]], "sim_seed": int(seed),
             "sim_source": geo["source"], "sim_contrast": params["kind"],
             "sim_TR_ms": params["TR"], "sim_TE_ms": params["TE"], "sim_TI_ms": params["TI"],
             "sim_snr": float("inf") if snr_v is None else float(snr_v),
             "sim_noise_sigma": sigma, "sim_coils": n_coils}
    return {"kspace": k.numpy(), "target": target, "header": header, "maps": maps,
            "image": image, "sigma": sigma, "attrs": attrs}


def simulate_mri_dataset(out_dir, n_volumes: int, slices_per_volume: int = 16, coils=(8, 16),
                         size: tuple[int, int] = (320, 320), snr=30.0, seed: int = 0,
                         progress: bool = True, overwrite: bool = False,
                         contrast: str = "random", source: str = "auto") -> list[Path]:
    """Write ``n_volumes`` fastMRI multi-coil files ``sim_mri_s{seed}_{i:05d}.h5`` into
    ``out_dir`` (created if missing); volume ``i`` is ``simulate_mri_volume(seed=
    volume_seed(seed, i))``.  Existing files are refused up front unless ``overwrite``."""
    from tqdm.auto import tqdm

    if n_volumes < 1 or slices_per_volume < 1:
        raise ValueError(f"need n_volumes >= 1 and slices_per_volume >= 1, got {n_volumes} "
                         f"and {slices_per_volume}")
    paths = plan_outputs(out_dir, [mri_file_name(seed, i) for i in range(n_volumes)], overwrite)
    for i, path in enumerate(tqdm(paths, disable=not progress, desc="simulate mri",
                                  unit="vol")):
        v = simulate_mri_volume(slices_per_volume, coils, size, snr, volume_seed(seed, i),
                                contrast, source)
        attrs = {**v["attrs"], "patient_id": f"medrecon-sim-{seed}-{i:05d}", "sim_index": i}
        write_fastmri(path, v["kspace"], header=v["header"], reconstruction_rss=v["target"],
                      attrs=attrs, overwrite=overwrite)
    return paths
