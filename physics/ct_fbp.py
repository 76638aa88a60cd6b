"""Filtered backprojection for `ParallelBeam` and full-scan `FanBeam` geometries.

Filtering (Kak & Slaney, "Principles of Computerized Tomographic Imaging", ch. 3, eq. 61, as
scikit-image `iradon`): each projection is zero-padded to ``P = max(64, next power of two >=
2 * n_pad)`` and multiplied in the Fourier domain by the DFT of the band-limited spatial ramp
kernel ``h(0) = 1/4, h(n odd) = -1/(pi n)^2`` times a window (``FILTERS``: ramp, shepp-logan,
cosine, hamming, hann; skimage's formulas).  As ``iradon(circle=True)`` does, the detector is
first extended with zeros to ``n_pad = ceil(sqrt(2) n_det)`` elements (centre kept at
``n_pad // 2``), and the filtered values on the extension are kept: pixels near the edge of the
field of view interpolate into them.  ``P >= 2 n_pad`` makes the circular convolution linear.

Backprojection is pixel-driven with linear interpolation along the (extended) detector, zeros
beyond it: one ``grid_sample`` over all angles of a chunk (transient ``chunk x B x N^2``).

- Parallel (K & S 3.3): ``f = (pi / K) sum_k Q_k(x cos a_k + y sin a_k)`` with
  ``Q = p * h / tau`` (tau = detector spacing); equals skimage's ``pi / (2K)`` with its doubled
  filter.  Angles must cover [0, pi) (modulo pi, no gap wider than 1.5 x the mean step).
- Fan, equi-angular detector (K & S 3.4.1): ``R' = p R cos g``, ``Q = R' * g_k`` with
  ``g(0) = 1/(8 da^2)``, ``g(n odd) = -1/(2 pi^2 sin^2(n da))``, ``f = (2 pi / K) sum Q(g') / L^2``
  (L: source-pixel distance, g': the pixel's fan angle, da: fan-angle step).
- Fan, flat detector (K & S 3.4.2), on the virtual detector through the centre
  (``s = a R / (R + D)``): ``R' = p R / sqrt(R^2 + s^2)``, ``Q = R' * h / 2``,
  ``f = (2 pi / K) sum Q(s') / U^2`` with ``U = (R + x.d) / R``.
  Full scan: angles cover [0, 2 pi).  Short scan (``short_scan=True``): views over at least
  ``pi + 2 gamma_max``, Parker weights (module `ct_parker`) applied before filtering and
  ``f = 2 dbeta sum w Q / L^2``.

The output is zeroed outside the field of view (inscribed circle of the image, and for fan beam
the circle of radius ``fov_radius`` every projection sees), as skimage does with ``circle=True``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .ct_geometry import FanBeam, ParallelBeam, _check_real

__all__ = ["fbp", "fourier_filter", "FILTERS", "check_angle_coverage"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def check_angle_coverage(angles: torch.Tensor, period: float, what: str) -> None:
    """Raise a ValueError unless ``angles`` (radians) cover ``[0, period)`` modulo ``period``
    with no gap wider than 1.5 times the mean step between distinct angles."""
    a = torch.sort(torch.remainder(angles.double().cpu(), period)).values
    d = torch.diff(a)
    keep = torch.cat((torch.ones(1, dtype=torch.bool), d > 1e-9))
    a = a[keep]
    k = a.numel()
    gaps = torch.diff(torch.cat((a, a[:1] + period)))
    if k < 2 or float(gaps.max()) > 1.5 * period / k:
        span = "pi" if period < 4 else "2 pi"
        raise ValueError(
            f"angles must cover [0, {span}) for {what} (modulo {span}, evenly enough); the "
            f"largest gap is {math.degrees(float(gaps.max())):.3g} deg for {k} distinct angles "
            f"(mean step {math.degrees(period / k):.3g} deg)")


@functools.lru_cache(maxsize=32)
def _window(size: int, name: str) -> np.ndarray:
    w = _window_values(size, name)
    w.setflags(write=False)  # cached: shared between calls
    return w


def _window_values(size: int, name: str) -> np.ndarray:
    if name == "ramp":
        return np.ones(size)
    if name == "shepp-logan":
        w = np.ones(size)
        omega = np.pi * np.fft.fftfreq(size)[1:]
        w[1:] = np.sin(omega) / omega
        return w
    if name == "cosine":
        return np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    if name == "hamming":
        return np.fft.fftshift(np.hamming(size))
    return np.fft.fftshift(np.hanning(size))


def fourier_filter(size: int, name: str = "ramp", kernel: np.ndarray | None = None) -> np.ndarray:
    """Real frequency response (length ``size``, even) of ``kernel`` (default: the ramp kernel,
    ``h(0) = 1/4``, ``h(n odd) = -1/(pi n)^2``, indexed circularly) times the window ``name``.

    Half of skimage's ``_get_fourier_filter`` (which doubles it and uses ``pi / (2K)``)."""
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    if kernel is None:
        kernel = _ramp_kernel(size)
    return np.real(np.fft.fft(kernel)) * _window(size, name)


def _ramp_kernel(size: int) -> np.ndarray:
    n = np.concatenate((np.arange(0, size // 2 + 1), np.arange(size // 2 - 1, 0, -1)))
    h = np.zeros(size)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return h


def _equiangular_kernel(size: int, dgamma: float) -> np.ndarray:
    """``g(n da) da^2``: ``1/8`` at 0, ``-da^2 / (2 pi^2 sin^2(n da))`` for odd n."""
    n = np.concatenate((np.arange(0, size // 2 + 1), -np.arange(size // 2 - 1, 0, -1)))
    g = np.zeros(size)
    g[0] = 0.125
    odd = n % 2 == 1
    g[odd] = -dgamma**2 / (2 * np.pi**2 * np.sin(n[odd] * dgamma) ** 2)
    return g


def _pad(n_det: int) -> tuple[int, int, int]:
    """``(P, before, after)``: FFT length and the detector extension of ``iradon(circle=True)``
    (to ``ceil(sqrt(2) n_det)`` elements, centre kept at index ``n // 2``)."""
    n_pad = int(math.ceil(math.sqrt(2) * n_det))
    before = n_pad // 2 - n_det // 2
    return max(64, 2 ** int(math.ceil(math.log2(2 * n_pad)))), before, n_pad - n_det - before


def _filter(p: torch.Tensor, response: np.ndarray, before: int, after: int) -> torch.Tensor:
    """Filtered projections on the detector extended by ``before``/``after`` zero elements
    (the filtered values there are not zero; pixels near the FOV edge interpolate into them)."""
    size = response.shape[0]
    n = p.shape[-1] + before + after
    # Re(ifft(fft(x) w)) for real x only sees the even part of w (the hann/hamming windows of
    # skimage are not even), so the half-spectrum transform is exact with it
    response = 0.5 * (response + np.roll(response[::-1], 1))
    spec = torch.fft.rfft(F.pad(p, (before, 0)), n=size, dim=-1)
    r = torch.as_tensor(response[: size // 2 + 1], dtype=p.dtype, device=p.device)
    return torch.fft.irfft(spec * r, n=size, dim=-1)[..., :n]


def _pixels(geo, device, dtype) -> torch.Tensor:
    """Pixel centres ``[N*N, 3]`` as ``(x, y, 1)``, x along columns and y up, in mm."""
    n = geo.image_size
    i = (torch.arange(n, dtype=torch.float64) - geo.center) * geo.pixel_size
    xy = torch.stack((i.view(1, n).expand(n, n), (-i).view(n, 1).expand(n, n),
                      torch.ones(n, n, dtype=torch.float64)), -1)
    return xy.reshape(-1, 3).to(device=device, dtype=dtype)


def _rotate(xy: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """``[kc, N*N, 2]``: each pixel's ``(x.e, x.d)`` at each angle (one batched matmul)."""
    c, s = torch.cos(ang), torch.sin(ang)
    z = torch.zeros_like(c)
    rot = torch.stack((torch.stack((c, s), -1), torch.stack((s, -c), -1),
                       torch.stack((z, z), -1)), -2)  # [kc, 3, 2]
    return torch.matmul(xy, rot.to(xy.dtype))


def _backproject(q: torch.Tensor, geo, grids) -> torch.Tensor:
    """``sum_k w_k(x) q_k(t_k(x))`` with linear interpolation along the detector.

    ``grids(idx) -> (grid [kc, N*N, 2], w [kc, N*N] or None)``: the grid's first channel is
    the normalised detector coordinate (``align_corners=False``: index t -> (2t + 1)/n - 1), the
    second 0 (a 1-row input per angle, so the interpolation is 1-D).
    """
    b, k, nd = q.shape
    npx = geo.image_size**2
    chunk = max(1, (1 << 21) // npx)
    out = q.new_zeros(b, npx)
    for i in range(0, k, chunk):
        idx = slice(i, min(i + chunk, k))
        grid, w = grids(idx)
        inp = q[:, idx].permute(1, 0, 2).unsqueeze(2)  # [kc, b, 1, nd]
        v = F.grid_sample(inp, grid.unsqueeze(1), mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, :, 0]  # [kc, b, npx]
        if w is not None:
            v = v * w.unsqueeze(1)
        out += v.sum(0)
    return out


def fbp(sinogram: torch.Tensor, geometry, filter: str = "ramp", *,
        short_scan: bool = False) -> torch.Tensor:
    """Filtered backprojection ``[..., n_angles, n_detectors] -> [..., N, N]`` (see module doc).

    Units follow the geometry: line integrals (dimensionless) in, attenuation in 1/mm out.
    ``short_scan=True`` (fan beam only): Parker-weighted FBP of a scan over ``pi + 2 gamma_max``.
    """
    if not isinstance(geometry, (ParallelBeam, FanBeam)):
        raise ValueError(f"geometry must be a ParallelBeam or FanBeam, got "
                         f"{type(geometry).__name__}")
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    geo = geometry
    _check_real(sinogram, "sinogram", geo.sinogram_shape, f"(n_angles, n_detectors of {geo!r})")
    if not torch.isfinite(sinogram).all():
        raise ValueError("sinogram contains NaN or Inf")
    fan = isinstance(geo, FanBeam)
    weights = None
    if short_scan:
        if not fan:
            raise ValueError("short_scan=True applies to fan-beam geometries (parallel-beam FBP "
                             "needs [0, pi) only)")
        from .ct_parker import parker_weights

        weights, dbeta = parker_weights(geo)
    else:
        check_angle_coverage(geo.angles, 2 * math.pi if fan else math.pi,
                             "full-scan fan-beam FBP (a short scan over pi + 2 gamma_max needs "
                             "short_scan=True)" if fan else "parallel-beam FBP")
    lead = sinogram.shape[:-2]
    k, nd = geo.sinogram_shape
    p = sinogram.reshape(-1, k, nd)
    if weights is not None:
        p = p * weights.to(p.device, p.dtype)
    dev, dt = p.device, p.dtype
    size, before, after = _pad(nd)
    c0 = geo.det_center + before  # centre index on the extended detector
    ne = nd + before + after  # extended detector length
    xy = _pixels(geo, dev, dt)
    n = geo.image_size
    det = (torch.arange(nd, dtype=torch.float64) - geo.det_center) * geo.detector_spacing
    ang = geo.angles.to(dev, dt)
    if not fan:
        tau = geo.detector_spacing
        q = _filter(p, fourier_filter(size, filter), before, after) / tau
        scale = math.pi / k
        a, bias = 2.0 / (tau * ne), (2 * c0 + 1.0) / ne - 1.0  # s (mm) -> normalised grid
        xya = xy * torch.tensor([a, a, 0.0], dtype=dt, device=dev)

        def grids(idx):
            # the bias is added after the rotation (its (x, y, 1) row maps 1 to 0): folding it
            # into xy dropped it and put the centre at (ne - 1) / 2, half a bin off for even ne
            g = _rotate(xya, ang[idx])
            g[..., 0] += bias
            g[..., 1] = 0
            return g, None
        fov = n // 2 * geo.pixel_size
    else:
        r = geo.source_distance
        sdd = r + geo.detector_distance
        scale = 2 * dbeta if weights is not None else 2 * math.pi / k
        if geo.detector == "equiangular":
            da = geo.detector_spacing / sdd
            pre = (r * torch.cos(det / sdd)).to(dev, dt)
            resp = fourier_filter(size, filter, _equiangular_kernel(size, da))
            q = _filter(p * pre, resp, before, after) / da
            a, bias = 2.0 / (da * ne), (2 * c0 + 1.0) / ne - 1.0  # fan angle -> grid

            def grids(idx):
                g = _rotate(xy, ang[idx])
                pe, ll = g[..., 0], g[..., 1].add_(r)  # lateral, distance along the axis
                w = torch.reciprocal(pe * pe + ll * ll)
                pe.copy_(torch.atan2(pe, ll).mul_(a).add_(bias))
                ll.zero_()
                return g, w
        else:
            tv = geo.detector_spacing * r / sdd  # spacing on the virtual detector
            pre = (r / torch.sqrt(r**2 + (det * r / sdd) ** 2)).to(dev, dt)
            q = _filter(p * pre, fourier_filter(size, filter), before, after) * (0.5 / tv)
            a, bias = 2.0 / (tv * ne), (2 * c0 + 1.0) / ne - 1.0  # virtual s' (mm) -> grid

            def grids(idx):
                g = _rotate(xy, ang[idx])
                pe, u = g[..., 0], g[..., 1].add_(r).div_(r)  # U = (R + x.d) / R
                w = torch.reciprocal(u * u)
                pe.div_(u).mul_(a).add_(bias)
                u.zero_()
                return g, w
        fov = min(n // 2 * geo.pixel_size, geo.fov_radius)
    img = _backproject(q, geo, grids) * scale
    xy64 = _pixels(geo, "cpu", torch.float64)
    outside = (xy64[:, 0] ** 2 + xy64[:, 1] ** 2) > fov**2 + 1e-9
    img[:, outside.to(dev)] = 0
    return img.reshape(*lead, n, n)
