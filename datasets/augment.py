"""Seeded geometric augmentation of source slices: flips, small rotation, scale, shift and a
smooth elastic warp, applied with one linear interpolation that also resamples to the output grid.

One `Augmentation` is drawn per simulated volume and applied to all its slices, so a volume stays
a consistent (posed, deformed) head; many draws give many distinct slices from one template.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["Augmentation", "random_augmentation", "warp"]


@dataclass(frozen=True)
class Augmentation:
    """The identity by default.  ``shift`` is a fraction of the FOV, ``elastic`` the RMS
    displacement as a fraction of the FOV, ``elastic_smooth`` the field's Gaussian width (fraction
    of the FOV) and ``seed`` seeds the elastic field."""

    flip_lr: bool = False
    flip_ud: bool = False
    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    elastic: float = 0.0
    elastic_smooth: float = 0.12
    seed: int = 0


def random_augmentation(rng: np.random.Generator, max_angle_deg: float = 10.0,
                        scale=(0.9, 1.1), max_shift: float = 0.03, elastic: float = 0.012,
                        p_flip_lr: float = 0.5, p_flip_ud: float = 0.0) -> Augmentation:
    """Draw an `Augmentation` from ``rng`` (left-right flips only by default: heads are
    nearly symmetric, anterior-posterior flips are not anatomical)."""
    return Augmentation(
        flip_lr=bool(rng.random() < p_flip_lr), flip_ud=bool(rng.random() < p_flip_ud),
        angle_deg=float(rng.uniform(-max_angle_deg, max_angle_deg)),
        scale=float(rng.uniform(*scale)),
        shift=tuple(float(v) for v in rng.uniform(-max_shift, max_shift, 2)),
        elastic=float(rng.uniform(0.5, 1.0) * elastic), seed=int(rng.integers(2**31)))


@functools.lru_cache(maxsize=8)  # one field serves every slice of a volume
def _elastic_field(aug: Augmentation, size: tuple[int, int]) -> np.ndarray:
    from scipy import ndimage

    n = max(size)
    noise = np.random.default_rng(aug.seed).standard_normal((2, *size))
    field = ndimage.gaussian_filter(noise, (0, aug.elastic_smooth * n, aug.elastic_smooth * n),
                                    mode="wrap")
    field /= np.sqrt((field ** 2).mean(axis=(1, 2), keepdims=True)) + 1e-12
    field *= aug.elastic * n
    field.setflags(write=False)
    return field


def warp(image: np.ndarray, size: tuple[int, int], src_side: float,
         aug: Augmentation = Augmentation()) -> np.ndarray:
    """Resample ``image [K, h, w]`` (source pixels) onto an ``H x W`` output grid whose smaller
    side spans ``src_side`` source pixels, through ``aug``; outside the source is 0 (air)."""
    from scipy import ndimage

    H, W = size
    k, h, w = image.shape
    yo, xo = np.mgrid[:H, :W].astype(np.float64)
    yo -= (H - 1) / 2
    xo -= (W - 1) / 2
    if aug.elastic > 0:
        d = _elastic_field(aug, (int(H), int(W)))
        yo, xo = yo + d[0], xo + d[1]
    f = src_side / min(H, W) / aug.scale
    th = np.deg2rad(aug.angle_deg)
    ys = f * (np.cos(th) * yo - np.sin(th) * xo) + aug.shift[0] * src_side
    xs = f * (np.sin(th) * yo + np.cos(th) * xo) + aug.shift[1] * src_side
    ys = -ys if aug.flip_ud else ys
    xs = -xs if aug.flip_lr else xs
    coords = np.stack([ys + (h - 1) / 2, xs + (w - 1) / 2])
    return np.stack([ndimage.map_coordinates(c, coords, order=1, cval=0.0) for c in image])
