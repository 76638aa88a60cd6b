"""Generic image texture for the CT autoencoder: random windows of scikit-image's bundled
photographs, mapped to random HU ranges.

Why: the autoencoder of latent cold diffusion must reproduce *any* slice it is given (z_T =
E(LDCT), output D(z_0)), but the head simulator's slices are nearly uniform inside the skull.
Trained on them alone (800 CPU steps, ``wide2``) it flattened a real vertebra slice (pydicom
``CT_small.dcm``) to a 159 HU body RMSE, 114 HU in soft tissue, against FBP's 76: fat, muscle and
trabecular texture were never seen.  LDM's autoencoders generalise because they are trained on
a large natural-image corpus (Rombach et al. 2022, Sec. 3.1: OpenImages); this is the offline,
small version of that: the grayscale images of ``skimage.data`` that ship with scikit-image
(no download), random square windows, resized to the slice size, each mapped linearly to a
random window [lo, hi] of HU (lo uniform in [-1000, 0], hi - lo uniform in [100, 2000]).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .data import from_hu

__all__ = ["TEXTURE_IMAGES", "texture_bank", "texture_batch", "texture_pairs"]

# scikit-image's bundled images (skimage/data/*.png, *.jpg): no pooch download needed
TEXTURE_IMAGES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
                  "retina", "rocket", "text")


@functools.lru_cache(maxsize=2)
def texture_bank(max_side: int = 512) -> tuple[torch.Tensor, ...]:
    """The bundled images as float32 grayscale tensors in [0, 1], downscaled to at most
    ``max_side`` pixels on their long side (retina and hubble are larger)."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    out = []
    for name in TEXTURE_IMAGES:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 3:
            im = rgb2gray(im[..., :3])
        im = im.astype(np.float64)
        im = (im - im.min()) / max(im.max() - im.min(), 1e-12)
        s = max_side / max(im.shape)
        if s < 1:
            im = rescale(im, s, anti_aliasing=True)
        out.append(torch.from_numpy(np.ascontiguousarray(im, np.float32)))
    return tuple(out)


def texture_batch(n: int, size: int, generator: torch.Generator, *,
                  lo_hu: tuple[float, float] = (-1000.0, 0.0),
                  span_hu: tuple[float, float] = (100.0, 2000.0)) -> torch.Tensor:
    """``n`` normalised slices ``[n, 1, size, size]`` (HU / 1000 units, `medrecon.ct.data`):
    a random square window of a random bank image (side uniform in [size/2, min side]),
    bilinearly resized to ``size``, mapped to a random HU window [lo, hi] (lo uniform in ``lo_hu``,
    hi - lo uniform in ``span_hu``; the defaults are the module docstring's)."""
    bank = texture_bank()
    u = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    out = []
    for _ in range(int(n)):
        im = bank[int(torch.randint(0, len(bank), (1,), generator=generator))]
        h, w = im.shape
        side = int(size // 2 + u() * (min(h, w) - size // 2))
        side = max(8, min(side, h, w))
        r, c = int(u() * (h - side + 1)), int(u() * (w - side + 1))
        win = im[r:r + side, c:c + side][None, None]
        win = torch.nn.functional.interpolate(win, size=(size, size), mode="bilinear",
                                              align_corners=False, antialias=side > size)
        lo = lo_hu[0] + (lo_hu[1] - lo_hu[0]) * u()
        hi = lo + span_hu[0] + (span_hu[1] - span_hu[0]) * u()
        out.append(from_hu(lo + (hi - lo) * win))
    return torch.cat(out).float()


def texture_pairs(n: int, size: int, *, seed: int = 0, i0: float = 1e4, sigma_e: float = 5.0,
                  n_angles: int | None = None, filter: str = "ramp",
                  pixel_mm: tuple[float, float] = (0.4, 1.0),
                  lo_hu: tuple[float, float] = (-1000.0, -300.0),
                  span_hu: tuple[float, float] = (300.0, 1500.0)) -> dict[str, torch.Tensor]:
    """``n`` (NDCT, LDCT) training pairs made from generic texture (`texture_batch`) the way
    `medrecon.ct.inputs` makes a low-dose scan of a real series: the whole square projected
    (``ceil(sqrt(2) N)`` detectors, ``circle=False``), ``simulate_lowdose`` at ``i0`` /
    ``sigma_e``, ramp FBP of the clean and the noisy sinogram.  Each item has its own pixel size,
    uniform in ``pixel_mm`` (path lengths, hence noise, vary as between zoomed and whole-body
    series).  The HU windows (``lo_hu``, ``span_hu``) are narrower than the autoencoder's: a
    square of bone-bright texture 2 mm a pixel starves the detector (RMSE of the FBP pairs 460 HU
    with the autoencoder's windows and 0.6-2 mm pixels).  Returns normalised ``ndct``, ``ldct``
    ``[n, 1, N, N]``."""
    from medrecon.physics.ct import MU_WATER, fbp, mu_to_hu, simulate_lowdose

    from .data import to_hu
    from .inputs import project_hu, whole_slice_geometry

    g = torch.Generator().manual_seed(int(seed))
    hu = to_hu(texture_batch(n, size, g, lo_hu=lo_hu, span_hu=span_hu))[:, 0]
    n_angles = int(n_angles) if n_angles is not None else (3 * size) // 2
    nd, ld = [], []
    for k in range(int(n)):
        px = pixel_mm[0] + (pixel_mm[1] - pixel_mm[0]) * float(torch.rand((), generator=g))
        geo = whole_slice_geometry(size, n_angles, px)
        clean = project_hu(geo, hu[k])
        low = simulate_lowdose(clean, i0, sigma_e, g)
        nd.append(from_hu(mu_to_hu(fbp(clean, geo, filter), MU_WATER)).float())
        ld.append(from_hu(mu_to_hu(fbp(low, geo, filter), MU_WATER)).float())
    return {"ndct": torch.stack(nd)[:, None], "ldct": torch.stack(ld)[:, None]}
