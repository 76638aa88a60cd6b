"""Cartesian k-space undersampling masks: fastMRI's column masks, Gaussian and Poisson-disc patterns.

Why: every reconstruction method here is evaluated on the masks its paper used, and fastMRI's
challenge masks must be reproducible bit for bit from a seed (STYLE.md "Reproducible
randomness"). Masks are bool tensors broadcastable to k-space ``[..., H, W]``: 1-D (column) kinds
return ``[1, W]`` (they vary along W, the phase-encode axis; H is the readout), 2-D kinds return
``[H, W]``. Frequency 0 sits at index ``n // 2`` of an axis of length ``n`` (centered FFT).

The fully sampled central block (the ACS / low-frequency region ``M_L`` of HFS-SDE) is always
``center_mask``'s block: ``n_low`` entries starting at ``(n - n_low + 1) // 2`` (fastMRI's rule),
so ``sample_mask(...).acs`` is exactly what samplers needing ``M_L`` should use.

Kinds (``KINDS``):

* ``random``, ``equispaced``, ``equispaced_fraction``, ``magic``, ``magic_fraction`` — the
  column patterns of fastMRI's ``RandomMaskFunc``, ``EquiSpacedMaskFunc``,
  ``EquispacedMaskFractionFunc``, ``MagicMaskFunc`` and ``MagicMaskFractionFunc``
  (fastmri/data/subsample.py; Zbontar et al. 2018, arXiv:1811.08839; "magic" is Defazio 2019,
  arXiv:1912.01101). Same seed, shape, acceleration and center fraction give identical bits:
  a ``numpy.random.RandomState`` is seeded with ``seed`` (int or sequence of ints, as fastMRI's
  per-file tuples) and drawn in the same order. ``n_low = round(W * center_fraction)``.
* ``gaussian1d`` — exactly ``round(W / acceleration)`` columns: the central ``n_low`` band plus
  ``round(W / acceleration) - n_low`` further columns drawn without replacement with probability
  proportional to ``exp(-k^2 / (2 sigma^2))``, ``k`` the column frequency, ``sigma = W * 15/128``
  (the width of Score-MRI's ``utils.py::get_mask('gaussian1d')``, Chung & Ye 2022; they draw with
  replacement, so their acceleration is only approximate — ours is exact).
* ``gaussian2d`` — exactly ``round(H W / acceleration)`` points: a fully sampled central block of
  ``round(H cf) x round(W cf)`` plus points drawn without replacement with probability
  proportional to ``exp(-ky^2/(2 sy^2) - kx^2/(2 sx^2))``, ``s = n * sqrt(1.5/128)`` per axis
  (Score-MRI's covariance ``size * size * 1.5/128``).
* ``poisson`` — variable-density Poisson disc (Bridson 2007) from ``sigpy.mri.poisson`` with its
  calibration region set to the central ``round(H cf) x round(W cf)`` block, corners cropped
  (sigpy's default) and sigpy's check that the achieved acceleration is within 0.1 of the
  request. Used by Score-MRI and SPIRiT-Diffusion.

Weighted sampling without replacement uses the Gumbel-top-k trick (Kool et al., ICML 2019,
"Stochastic Beams and Where to Find Them", Sec. 2): add i.i.d.
Gumbel noise to the log-weights and keep the k largest; log-weights never underflow.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["KINDS", "SampledMask", "sample_mask", "make_mask", "center_mask", "acs_width", "calibration_region"]

KINDS_1D = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "gaussian1d")
KINDS_2D = ("gaussian2d", "poisson")
KINDS = KINDS_1D + KINDS_2D
_OFFSET_KINDS = ("equispaced", "equispaced_fraction", "magic", "magic_fraction")

Seed = Optional[Union[int, Sequence[int]]]


@dataclass(frozen=True)
class SampledMask:
    """A sampled mask and its fully sampled centre.

    ``mask`` and ``acs`` are bool tensors of the same shape (``[1, W]`` for 1-D kinds, ``[H, W]``
    for 2-D kinds); ``acs`` marks the fully sampled central (ACS, low-frequency) block and is a
    subset of ``mask``. ``acs_shape`` is that block's ``(rows, columns)``; rows is ``H`` for 1-D
    kinds (every readout row of an ACS column is sampled).
    """

    mask: torch.Tensor
    acs: torch.Tensor
    acs_shape: tuple[int, int]

    @property
    def num_low_frequencies(self) -> int:
        """Number of fully sampled central columns (fastMRI's ``num_low_frequencies``)."""
        return self.acs_shape[1]

    @property
    def acceleration(self) -> float:
        """Achieved acceleration: k-space locations / sampled locations (inf if none sampled)."""
        n = int(self.mask.sum())
        return self.mask.numel() / n if n else math.inf


# ----------------------------------------------------------------------------- validation

def _check_shape(shape) -> tuple[int, int]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) < 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape
    ):
        raise ValueError(f"shape must be a sequence of at least 2 integers (..., H, W), got {shape!r}")
    H, W = int(shape[-2]), int(shape[-1])
    if H <= 0 or W <= 0:
        raise ValueError(f"shape must have positive H and W (last two entries), got {tuple(shape)}")
    return H, W


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_acceleration(acceleration) -> None:
    if not _is_real(acceleration) or not math.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration!r}")


def _check_center_fraction(center_fraction) -> None:
    if not _is_real(center_fraction) or not 0 < center_fraction < 1:
        raise ValueError(f"center_fraction must be a number in (0, 1), got {center_fraction!r}")


def _integer_acceleration(kind: str, acceleration) -> int:
    if float(acceleration) != int(acceleration):
        raise ValueError(f"acceleration must be an integer for kind={kind!r} (it is the spacing "
                         f"between sampled columns), got {acceleration!r}")
    return int(acceleration)


def _check_seed(seed) -> None:
    ok = seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool))
    if not ok and isinstance(seed, (tuple, list)) and len(seed) > 0:
        ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seed)
    if ok and seed is not None:
        values = [seed] if isinstance(seed, numbers.Integral) else list(seed)
        ok = all(0 <= int(v) < 2**32 for v in values)
    if not ok:
        raise ValueError(f"seed must be None, an integer in [0, 2**32) or a non-empty sequence of "
                         f"such integers, got {seed!r}")


def _center_slice(n: int, n_low: int) -> slice:
    """fastMRI's centering: ``n_low`` entries starting at ``(n - n_low + 1) // 2``."""
    start = (n - n_low + 1) // 2
    return slice(start, start + n_low)


# ----------------------------------------------------------------------------- ACS helper

def center_mask(shape, num_low_frequencies=None, *, center_fraction=None, two_d: bool = False,
                device=None) -> torch.Tensor:
    """The low-frequency (ACS) mask ``M_L``: a fully sampled central band or block.

    Give exactly one of ``num_low_frequencies`` and ``center_fraction``. With ``two_d=False``
    the result is a ``[1, W]`` column mask with ``num_low_frequencies`` (or
    ``round(W * center_fraction)``) central columns. With ``two_d=True`` it is an ``[H, W]``
    block of ``(rows, cols)``: ``num_low_frequencies`` may be an int (square) or a pair, and
    ``center_fraction`` gives ``(round(H cf), round(W cf))``. Centering as fastMRI's
    ``calculate_center_mask``.
    """
    H, W = _check_shape(shape)
    if (num_low_frequencies is None) == (center_fraction is None):
        raise ValueError("give exactly one of num_low_frequencies (int, or (rows, cols) with "
                         "two_d=True) and center_fraction (number in (0, 1))")
    if center_fraction is not None:
        _check_center_fraction(center_fraction)
        rows, cols = round(H * center_fraction), round(W * center_fraction)
    else:
        n = num_low_frequencies
        pair = two_d and isinstance(n, (tuple, list)) and len(n) == 2
        vals = list(n) if pair else [n]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals):
            raise ValueError("num_low_frequencies must be a non-negative int"
                             + (" or a (rows, cols) pair" if two_d else "") + f", got {n!r}")
        rows, cols = (int(vals[0]), int(vals[-1]))
    if not (0 <= cols <= W and (not two_d or 0 <= rows <= H)):
        raise ValueError(f"num_low_frequencies must fit in shape ({H}, {W}) "
                         f"(0 <= rows <= H, 0 <= cols <= W), got {num_low_frequencies!r}")
    if two_d:
        out = torch.zeros(H, W, dtype=torch.bool)
        out[_center_slice(H, rows), _center_slice(W, cols)] = True
    else:
        out = torch.zeros(1, W, dtype=torch.bool)
        out[:, _center_slice(W, cols)] = True
    return out if device is None else out.to(device)


# ----------------------------------------------------------------------------- fastMRI kinds

def _equispaced_columns(W, acceleration, offset, rng):
    if offset is None:
        offset = rng.randint(0, high=round(acceleration))
    outer = np.zeros(W, dtype=bool)
    outer[offset::acceleration] = True
    return outer


def _magic_columns(W, acceleration, offset, rng):
    """Defazio's offset sampling: equispaced on each half of k-space, shifted between halves."""
    if offset is None:
        offset = rng.randint(0, high=acceleration)
    if offset % 2 == 0:
        start_pos, start_neg = offset + 1, offset + 2
    else:
        start_pos, start_neg = offset + 2, offset - 1
    n_pos = (W + 1) // 2
    pos = np.zeros(n_pos, dtype=bool)
    neg = np.zeros(W - n_pos, dtype=bool)
    pos[start_pos::acceleration] = True
    neg[start_neg::acceleration] = True
    return np.fft.fftshift(np.concatenate((pos, neg[::-1])))


def _fastmri_columns(kind, W, acceleration, center_fraction, offset, seed):
    """Return (outer column pattern, n_low) exactly as fastMRI's mask function of that kind."""
    rng = np.random.RandomState(seed)  # seed None: fresh entropy, like an unseeded MaskFunc
    n_low = round(W * center_fraction)
    if kind == "random":
        if n_low >= W:
            raise ValueError(f"center_fraction={center_fraction} covers all {W} columns; "
                             f"kind='random' needs round(W * center_fraction) < W")
        prob = (W / acceleration - n_low) / (W - n_low)
        return rng.uniform(size=W) < prob, n_low
    if kind == "equispaced":
        return _equispaced_columns(W, _integer_acceleration(kind, acceleration), offset, rng), n_low
    if kind == "magic":
        return _magic_columns(W, _integer_acceleration(kind, acceleration), offset, rng), n_low
    if kind == "equispaced_fraction":
        if n_low * acceleration >= W:
            raise ValueError(f"kind='equispaced_fraction' needs round(W * center_fraction) * "
                             f"acceleration < W; got {n_low} * {acceleration} >= W = {W} "
                             f"(lower acceleration or center_fraction)")
        spacing = acceleration * (n_low - W) / (n_low * acceleration - W)
        if offset is None:
            offset = rng.randint(0, high=round(spacing))
        outer = np.zeros(W, dtype=bool)
        outer[np.around(np.arange(offset, W - 1, spacing)).astype(np.uint)] = True
        return outer, n_low
    # magic_fraction: the centre is clipped to [1, target columns]; the rest are magic-spaced.
    target = round(W / acceleration)
    n_low = max(min(n_low, target), 1)
    if target - n_low <= 0:
        raise ValueError(f"kind='magic_fraction' needs round(W / acceleration) > the number of "
                         f"center columns; got round({W} / {acceleration}) = {target} and "
                         f"{n_low} center columns (lower acceleration or center_fraction)")
    return _magic_columns(W, round(W / (target - n_low)), offset, rng), n_low


# ----------------------------------------------------------------------------- variable density

def _gumbel_top_k(log_weights: np.ndarray, candidates: np.ndarray, k: int, rng) -> np.ndarray:
    """Indices (into the flat arrays) of k candidates drawn without replacement ∝ exp(log_w)."""
    keys = log_weights + rng.gumbel(size=log_weights.shape)
    keys = np.where(candidates, keys, -np.inf)
    return np.argpartition(-keys.ravel(), k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)


def _frequencies(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) - n // 2


def _gaussian1d(H, W, acceleration, center_fraction, seed):
    n_low = round(W * center_fraction)
    total = round(W / acceleration)
    if total < n_low:
        raise ValueError(f"kind='gaussian1d' needs round(W / acceleration) >= round(W * "
                         f"center_fraction); got {total} < {n_low} (lower acceleration or "
                         f"center_fraction)")
    center = np.zeros(W, dtype=bool)
    center[_center_slice(W, n_low)] = True
    sigma = W * 15.0 / 128.0
    log_w = -_frequencies(W) ** 2 / (2 * sigma**2)
    mask = center.copy()
    mask[_gumbel_top_k(log_w, ~center, total - n_low, np.random.default_rng(seed))] = True
    return mask[None, :], (H, n_low)


def _block(H, W, center_fraction):
    rows, cols = round(H * center_fraction), round(W * center_fraction)
    block = np.zeros((H, W), dtype=bool)
    block[_center_slice(H, rows), _center_slice(W, cols)] = True
    return block, (rows, cols)


def _gaussian2d(H, W, acceleration, center_fraction, seed):
    center, acs_shape = _block(H, W, center_fraction)
    total = round(H * W / acceleration)
    if total < center.sum():
        raise ValueError(f"kind='gaussian2d' needs round(H W / acceleration) >= the central "
                         f"block's {int(center.sum())} points, got {total} (lower acceleration "
                         f"or center_fraction)")
    s = math.sqrt(1.5 / 128.0)
    log_w = (-_frequencies(H)[:, None] ** 2 / (2 * (H * s) ** 2)
             - _frequencies(W)[None, :] ** 2 / (2 * (W * s) ** 2))
    mask = center.copy().ravel()
    k = total - int(center.sum())
    mask[_gumbel_top_k(log_w, ~center, k, np.random.default_rng(seed))] = True
    return mask.reshape(H, W), acs_shape


def _sigpy_poisson(shape, accel, calib, seed, tol=0.1, max_attempts=30):
    """``sigpy.mri.poisson(shape, accel, calib, seed=seed)`` (sigpy 0.1.27 ``mri/samp.py`` L56-93: bisection
    on the density slope around its numba ``_poisson``), the same slopes and so the same mask, except that
    the bisection stops once its midpoint rounds to an end of the bracket: sigpy's ``while slope_min <
    slope_max`` never ends there (the midpoint of two adjacent floats is one of them), which hung
    ``seed=None`` runs for some seeds (found on 32x32, acceleration 4, centre 0.1)."""
    from sigpy.mri.samp import _poisson as sp_poisson  # lazy: numba start-up is slow

    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    x = np.maximum(abs(x - nx / 2) - calib[-1] / 2, 0)
    x /= x.max()
    y = np.maximum(abs(y - ny / 2) - calib[-2] / 2, 0)
    y /= y.max()
    r = np.sqrt(x ** 2 + y ** 2)
    state = np.random.get_state()
    try:
        slope_min, slope_max = 0, max(nx, ny)
        while slope_min < slope_max:
            slope = (slope_max + slope_min) / 2
            rx = np.clip((1 + r * slope) * nx / max(nx, ny), 1, None)
            ry = np.clip((1 + r * slope) * ny / max(nx, ny), 1, None)
            mask = sp_poisson(nx, ny, max_attempts, rx, ry, calib, seed) * (r < 1)
            actual = nx * ny / np.sum(mask)
            if abs(actual - accel) < tol or slope in (slope_min, slope_max):
                break
            if actual < accel:
                slope_min = slope
            else:
                slope_max = slope
    finally:
        np.random.set_state(state)  # the global RNG untouched, as sigpy does
    if abs(actual - accel) >= tol:
        raise ValueError(f"Cannot generate mask to satisfy accel={accel}.")
    return mask.reshape(shape).astype(np.float32)


def _poisson(H, W, acceleration, center_fraction, seed):
    center, acs_shape = _block(H, W, center_fraction)
    if acceleration == 1:
        return np.ones((H, W), dtype=bool), acs_shape
    if center.sum() >= H * W / acceleration:
        raise ValueError(f"kind='poisson' needs the central block ({acs_shape[0]}x{acs_shape[1]}"
                         f") smaller than H W / acceleration = {H * W / acceleration:.1f} points "
                         f"(lower acceleration or center_fraction)")
    if isinstance(seed, numbers.Integral):
        seeds = [int(seed)]  # sigpy's own seed: identical to sigpy.mri.poisson(..., seed=seed)
    else:  # None (fresh entropy) or a sequence: integer seeds for sigpy's numba RNG, the next one
        # when a draw misses the tolerance (seed 334 does on 32x32 at 4x; any valid draw will do here)
        seeds = [int(v) for v in np.random.default_rng(seed).integers(0, 2**31, 8)]
    try:
        for i, sp_seed in enumerate(seeds):
            try:
                pattern = _sigpy_poisson((H, W), acceleration, acs_shape, sp_seed)
                break
            except ValueError:
                if i == len(seeds) - 1:
                    raise
    except ValueError as err:
        raise ValueError(f"kind='poisson': sigpy cannot reach acceleration={acceleration} within "
                         f"0.1 for shape ({H}, {W}) and center_fraction={center_fraction} "
                         f"({err})") from err
    # sigpy centres an odd-sized calibration block one sample off fastMRI's rule; add ours.
    return (pattern > 0) | center, acs_shape


# ----------------------------------------------------------------------------- public API

def sample_mask(kind: str, shape, acceleration, center_fraction, seed: Seed = None,
                offset: Optional[int] = None, *, device=None) -> SampledMask:
    """Sample an undersampling mask of ``kind`` (see the module docstring for each definition).

    Args:
        kind: one of ``KINDS``.
        shape: k-space shape ``(..., H, W)``; only the last two entries matter.
        acceleration: requested undersampling factor, >= 1 (an integer for ``equispaced`` and
            ``magic``, as in fastMRI).
        center_fraction: fraction in (0, 1) of the central columns (1-D kinds) or of each axis
            (2-D kinds) that is fully sampled.
        seed: None (non-deterministic), an int in [0, 2**32) or a sequence of such ints (fastMRI
            seeds per file with ``tuple(map(ord, fname))``).
        offset: first sampled column of the equispaced/magic pattern (fastMRI's ``offset``);
            None draws it from the seed. Only for ``equispaced``, ``equispaced_fraction``,
            ``magic`` and ``magic_fraction``.
        device: where to put the tensors (default CPU).

    Returns:
        ``SampledMask`` with ``mask`` (bool ``[1, W]`` or ``[H, W]``), its ACS block ``acs``,
        ``acs_shape``, ``num_low_frequencies`` and the achieved ``acceleration``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    H, W = _check_shape(shape)
    _check_acceleration(acceleration)
    _check_center_fraction(center_fraction)
    _check_seed(seed)
    if offset is not None:
        if kind not in _OFFSET_KINDS:
            raise ValueError(f"offset applies only to kinds {', '.join(_OFFSET_KINDS)}; "
                             f"got offset={offset!r} with kind={kind!r}")
        if not isinstance(offset, numbers.Integral) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset must be None or a non-negative integer, got {offset!r}")
        offset = int(offset)

    if kind == "gaussian1d":
        mask, acs_shape = _gaussian1d(H, W, acceleration, center_fraction, seed)
    elif kind == "gaussian2d":
        mask, acs_shape = _gaussian2d(H, W, acceleration, center_fraction, seed)
    elif kind == "poisson":
        mask, acs_shape = _poisson(H, W, acceleration, center_fraction, seed)
    else:
        outer, n_low = _fastmri_columns(kind, W, acceleration, center_fraction, offset, seed)
        center = np.zeros(W, dtype=bool)
        center[_center_slice(W, n_low)] = True
        mask, acs_shape = (outer | center)[None, :], (H, n_low)

    two_d = kind in KINDS_2D
    acs = center_mask((H, W), acs_shape if two_d else acs_shape[1], two_d=two_d, device=device)
    mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return SampledMask(mask if device is None else mask.to(device), acs, acs_shape)


def make_mask(kind: str, shape, acceleration, center_fraction, seed: Seed = None,
              offset: Optional[int] = None, *, device=None) -> torch.Tensor:
    """The bool mask of ``sample_mask(...)``: ``[1, W]`` for 1-D kinds, ``[H, W]`` for 2-D kinds.

    Use ``sample_mask`` when the ACS block or the number of low frequencies is needed too.
    """
    return sample_mask(kind, shape, acceleration, center_fraction, seed, offset,
                       device=device).mask


def acs_width(mask: torch.Tensor) -> int:
    """Side of the largest fully sampled *centred* block (start ``n//2 - m//2``, the crop used
    by ESPIRiT and SPIRiT calibration): columns for 1-D masks, a square for 2-D masks, over all
    masks of a batch.  For any tensor mask (``SampledMask.acs`` knows it for sampled ones)."""
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


def calibration_region(mask: torch.Tensor, height: int) -> Union[int, tuple[int, int]]:
    """The ESPIRiT/SPIRiT calibration block of k-space with ``height`` readout rows sampled on
    ``mask``: the fully sampled centre, at most 24 wide; 1-D masks: by up to 48 readout rows (every
    readout row of the ACS columns is calibration data, 48 suffice)."""
    acs = acs_width(mask)
    return (min(height, 48), min(acs, 24)) if mask.shape[-2] == 1 else min(acs, 24)
