"""Normalisation of the MRI recipes' training images (`mri`, `mri_scales`, `mri_heldout`): what
the samplers expect with ``normalize=True`` (``medrecon.methods.vp``: k-space divided by
max |A^H y|, the zero-filled image's maximum).  Every image x is divided by max |F^-1 M F x| for a
mask M drawn per image (seeded by its index) from fastMRI's 4x (8% centre) and 8x (4% centre)
equispaced_fraction / random masks -- the single-coil form of A^H y."""
from __future__ import annotations

__all__ = ["normalize_images"]

_MASKS = (("equispaced_fraction", 4, 0.08), ("random", 4, 0.08), ("equispaced_fraction", 8, 0.04),
          ("random", 8, 0.04))


def normalize_images(images, seed: int = 0):
    """Complex images [N, H, W] / max |F^-1 M_i F x_i| with M_i one of the fastMRI 4x/8x masks,
    drawn per image from ``seed + i``."""
    import torch

    from medrecon.physics.fft import fft2c, ifft2c
    from medrecon.physics.masks import make_mask

    if not isinstance(images, torch.Tensor) or not images.is_complex() or images.ndim != 3:
        raise ValueError(f"images: expected complex [N, H, W], got {getattr(images, 'dtype', type(images))} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    out = torch.empty_like(images, dtype=torch.complex64)
    H, W = images.shape[-2:]
    for i, x in enumerate(images.to(torch.complex64)):
        kind, acc, cf = _MASKS[(seed + i) % len(_MASKS)]
        m = make_mask(kind, (H, W), acc, cf, seed=seed + i)
        scale = ifft2c(fft2c(x) * m).abs().max()
        if not scale > 0:
            raise ValueError(f"images: image {i} is zero")
        out[i] = x / scale
    return out
