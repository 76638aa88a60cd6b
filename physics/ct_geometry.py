"""2-D CT projectors: parallel beam and fan beam (equi-angular or flat detector), batched.

Both are *ray-driven* with bilinear interpolation (Joseph-like): each ray is sampled at a fixed
step of one pixel, the image is interpolated there with ``torch.nn.functional.grid_sample``
(zeros outside the image) and the samples are summed (times step and pixel size, so line
integrals of ``mu`` in 1/mm come out dimensionless).  The same sampling grid drives the
backprojector: ``adjoint`` calls ``aten.grid_sampler_2d_backward`` with the sinogram broadcast
along each ray (a stride-0 view, no copy), which scatters exactly the weights ``forward``
gathered, so it is the matched transpose (<A x, y> = <x, A^T y> to rounding), on CPU and GPU.
``forward`` and ``adjoint`` are autograd Functions whose gradients are each other (any order),
so guidance losses can differentiate through either without grid_sample's own autograd.

Memory: no system matrix.  The sampling grid of one geometry holds ``2 K M n_det`` numbers
(K angles, M samples per ray ~ N, n_det detectors; 4 MB for 64 px x 60 angles in float32,
190 MB for 256 px x 360 angles); it is cached per (device, dtype) when under ``cache_mb``,
otherwise rebuilt per call.  Work is done in chunks of angles of at most ``chunk_samples`` ray
samples so the transient output per chunk is ``B * chunk_samples`` numbers.

Coordinates (scikit-image `radon` convention): the rotation centre is pixel ``(N//2, N//2)``;
``x`` runs along columns, ``y`` up (against rows); detector element ``t`` sits at lateral
position ``(t - n_det//2) * detector_spacing`` along ``e = (cos a, sin a)``; the parallel ray at
angle ``a`` runs along ``d = (sin a, -cos a)``, so ``ParallelBeam`` with ``n_detectors=N`` and unit
spacings equals ``skimage.transform.radon(image, theta=degrees(angles), circle=True)``
(Kak & Slaney, ch. 3, eq. 3: ``p(a, s) = int f(x, y) delta(x cos a + y sin a - s)``).  The fan
source sits at ``-R d`` (R = ``source_distance``), the detector at ``+D d``; a fan ray at fan angle
``g`` is the parallel ray ``(a + g, R sin g)`` (Kak & Slaney, ch. 3.4).
"""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F

__all__ = ["ParallelBeam", "FanBeam", "DETECTORS"]

DETECTORS = ("equiangular", "flat")


def _angles(angles) -> torch.Tensor:
    try:
        a = torch.as_tensor(angles).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"angles must be a 1-D tensor/array of radians, got "
                         f"{type(angles).__name__}") from None
    if a.ndim != 1 or a.numel() < 1:
        raise ValueError(f"angles must be a non-empty 1-D tensor/array of radians, got shape "
                         f"{tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError("angles contains NaN or Inf")
    return a


def _positive(value, name: str) -> float:
    v = float(value)
    if not v > 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_real(x, name: str, shape: tuple[int, int], what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor (float32/float64), got {x.dtype}")
    if x.ndim < 2 or tuple(x.shape[-2:]) != shape:
        raise ValueError(f"{name} must have shape [..., {shape[0]}, {shape[1]}] {what}, "
                         f"got {tuple(x.shape)}")


class _RayProjector(abc.ABC):
    """Shared machinery: a geometry supplies ray sample points, this does gather/scatter."""

    def __init__(self, image_size, angles, n_detectors, detector_spacing, pixel_size, circle,
                 chunk_samples, cache_mb):
        n = int(image_size)
        if n != image_size or n < 2:
            raise ValueError(f"image_size must be an integer >= 2 (the image is N x N), got "
                             f"{image_size!r}")
        self.image_size = n
        self.angles = _angles(angles)
        self.n_angles = int(self.angles.numel())
        nd = n if n_detectors is None else int(n_detectors)
        if nd < 1 or (n_detectors is not None and nd != n_detectors):
            raise ValueError(f"n_detectors must be a positive integer, got {n_detectors!r}")
        self.n_detectors = nd
        self.detector_spacing = _positive(detector_spacing, "detector_spacing")
        self.pixel_size = _positive(pixel_size, "pixel_size")
        self.circle = bool(circle)
        self.center = n // 2
        self.det_center = nd // 2
        self.chunk_samples = int(chunk_samples)
        self.cache_bytes = float(cache_mb) * 2**20
        self._cache: dict = {}

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_angles, self.n_detectors)

    @property
    def support_radius(self) -> float:
        """Radius (pixels) of the object support the rays are sampled over."""
        return self.image_size / 2 if self.circle else self.image_size / math.sqrt(2)

    # geometry hook: rays as base point (closest to the centre) and unit direction, (col, row)
    # pixel coordinates, float64 [Kc, n_det, 2] each; samples are base + u * dir, u = self._u
    @abc.abstractmethod
    def _rays(self, idx: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays of the views ``idx`` (each geometry defines them)."""

    def _n_samples(self) -> int:
        return int(self._u.numel())

    def _chunks(self) -> list[slice]:
        per_angle = self.n_detectors * self._n_samples()
        k = max(1, self.chunk_samples // per_angle)
        return [slice(i, min(i + k, self.n_angles)) for i in range(0, self.n_angles, k)]

    def _grid(self, idx: slice, device, dtype) -> torch.Tensor:
        base, d = self._rays(idx)
        s = 2.0 / (self.image_size - 1)  # align_corners=True: pixel p -> 2 p / (N - 1) - 1
        base = (base * s - 1.0).to(device=device, dtype=dtype).unsqueeze(2)
        d = (d * s).to(device=device, dtype=dtype).unsqueeze(2)
        u = self._u.to(device=device, dtype=dtype).view(1, 1, -1, 1)
        g = torch.addcmul(base, u, d)  # [Kc, n_det, M, 2]
        return g.view(1, -1, g.shape[2], 2)

    def _grids(self, device, dtype):
        key = (torch.device(device), dtype)
        if key in self._cache:
            yield from self._cache[key]
            return
        chunks = self._chunks()
        size = 2 * self.n_angles * self.n_detectors * self._n_samples()
        cache = size * torch.finfo(dtype).bits // 8 <= self.cache_bytes
        grids = []
        for idx in chunks:
            g = self._grid(idx, device, dtype)
            if cache:
                grids.append((idx, g))
            yield idx, g
        if cache:
            self._cache[key] = grids

    def _scale(self) -> float:
        return self.step * self.pixel_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals ``[..., n_angles, n_detectors]`` of ``image [..., N, N]``."""
        _check_real(image, "image", self.image_shape, "(the geometry's image_size)")
        lead = image.shape[:-2]
        x = image.reshape(math.prod(lead), self.image_size, self.image_size)
        return _Ray.apply(x, self, False).reshape(*lead, self.n_angles, self.n_detectors)

    def adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Matched backprojection ``A^T y`` of ``sinogram [..., n_angles, n_detectors]``."""
        _check_real(sinogram, "sinogram", self.sinogram_shape,
                    "(n_angles, n_detectors of the geometry)")
        lead = sinogram.shape[:-2]
        y = sinogram.reshape(math.prod(lead), self.n_angles, self.n_detectors)
        return _Ray.apply(y, self, True).reshape(*lead, self.image_size, self.image_size)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, N] -> [B, K, n_det]``: gather along the rays (no autograd)."""
        b = x.shape[0]
        x = x.reshape(1, b, self.image_size, self.image_size)
        out = x.new_empty(b, self.n_angles, self.n_detectors)
        for idx, g in self._grids(x.device, x.dtype):
            v = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, idx] = v.sum(-1).view(b, -1, self.n_detectors)
        return out.mul_(self._scale())

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, K, n_det] -> [B, N, N]``: scatter the same weights (exact transpose)."""
        b, n, m = y.shape[0], self.image_size, self._n_samples()
        y = y * self._scale()
        dummy = y.new_zeros(()).expand(1, b, n, n)  # only its shape is read
        out = None
        for idx, g in self._grids(y.device, y.dtype):
            go = y[:, idx].reshape(1, b, -1, 1).expand(1, b, g.shape[1], m)  # stride 0 along M
            gi = torch.ops.aten.grid_sampler_2d_backward(go, dummy, g, 0, 0, True,
                                                         [True, False])[0]
            out = gi if out is None else out.add_(gi)
        return out.view(b, n, n)

    __call__ = forward

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(image))

    def gradient(self, image: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        """Gradient of ``1/2 ||A x - y||^2``: ``A^T (A x - y)``."""
        return self.adjoint(self.forward(image) - sinogram)


class _Ray(torch.autograd.Function):
    """``A x`` (``transpose=False``) or ``A^T y`` (``transpose=True``) whose gradient is the other
    one (any order), independent of grid_sample's autograd."""

    @staticmethod
    def forward(ctx, x, geo, transpose):
        ctx.geo, ctx.transpose = geo, transpose
        return geo._backproject(x) if transpose else geo._project(x)

    @staticmethod
    def backward(ctx, g):
        return _Ray.apply(g.contiguous(), ctx.geo, not ctx.transpose), None, None


class ParallelBeam(_RayProjector):
    """Parallel-beam projector ``image [..., N, N] -> sinogram [..., n_angles, n_detectors]``.

    ``angles`` in radians (1-D); ``detector_spacing`` and ``pixel_size`` in mm (line integrals
    of 1/mm images are then dimensionless).  ``circle=True`` (default) samples each ray over the
    N rows of scikit-image's rotated image, assuming the object lies in the inscribed circle
    (exactly skimage ``radon(circle=True)`` for ``n_detectors=N`` and unit spacings);
    ``circle=False`` samples over the whole square.
    """

    step = 1.0

    def __init__(self, image_size: int, angles, n_detectors: int | None = None,
                 detector_spacing: float = 1.0, pixel_size: float = 1.0, *, circle: bool = True,
                 chunk_samples: int = 1 << 22, cache_mb: float = 256):
        super().__init__(image_size, angles, n_detectors, detector_spacing, pixel_size, circle,
                         chunk_samples, cache_mb)
        n = self.image_size
        if self.circle:  # skimage: rows 0..N-1 of the rotated image, u = row - N//2
            self._u = torch.arange(n, dtype=torch.float64) - self.center
        else:
            h = math.ceil(n / math.sqrt(2)) + 1
            self._u = torch.arange(-h, h + 1, dtype=torch.float64)
        self._s = ((torch.arange(self.n_detectors, dtype=torch.float64) - self.det_center)
                   * (self.detector_spacing / self.pixel_size))

    def _rays(self, idx):
        a = self.angles[idx].view(-1, 1)
        c, s = torch.cos(a), torch.sin(a)
        det = self._s.view(1, -1)
        base = torch.stack((self.center + det * c, self.center - det * s), -1)
        d = torch.stack((s, c), -1).expand_as(base)
        return base, d

    def __repr__(self) -> str:
        return (f"ParallelBeam(image_size={self.image_size}, n_angles={self.n_angles}, "
                f"n_detectors={self.n_detectors}, detector_spacing={self.detector_spacing}, "
                f"pixel_size={self.pixel_size}, circle={self.circle})")


class FanBeam(_RayProjector):
    """Fan-beam projector, equi-angular (arc) or flat detector, same interface as ParallelBeam.

    ``source_distance`` R (source to rotation centre) and ``detector_distance`` D (centre to
    detector) in mm; ``detector_spacing`` in mm along the detector (arc length on the arc of
    radius R + D centred at the source for ``"equiangular"``, so the fan-angle step is
    ``spacing / (R + D)``).  Each ray is sampled at unit steps symmetric about its closest
    point to the centre, over the support circle (``circle``: inscribed, else circumscribed)
    plus one pixel.  The source must lie outside the image (``R > N/sqrt(2) * pixel_size``).
    """

    step = 1.0

    def __init__(self, image_size: int, angles, source_distance: float,
                 detector_distance: float, n_detectors: int, detector_spacing: float,
                 detector: str = "equiangular", pixel_size: float = 1.0, *, circle: bool = True,
                 chunk_samples: int = 1 << 22, cache_mb: float = 256):
        if n_detectors is None:
            raise ValueError("n_detectors is required for FanBeam")
        super().__init__(image_size, angles, n_detectors, detector_spacing, pixel_size, circle,
                         chunk_samples, cache_mb)
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        self.detector = detector
        self.source_distance = _positive(source_distance, "source_distance")
        dd = float(detector_distance)
        if not dd >= 0 or not math.isfinite(dd):
            raise ValueError(f"detector_distance must be >= 0 (mm), got {detector_distance!r}")
        self.detector_distance = dd
        half_diag = self.image_size / math.sqrt(2) * self.pixel_size
        if self.source_distance <= half_diag:
            raise ValueError(f"source_distance ({self.source_distance} mm) must exceed the image "
                             f"half-diagonal ({half_diag:.3g} mm): the source must lie outside "
                             "the image")
        sdd = self.source_distance + self.detector_distance
        pos = (torch.arange(self.n_detectors, dtype=torch.float64) - self.det_center) \
            * self.detector_spacing
        self.gammas = pos / sdd if detector == "equiangular" else torch.atan(pos / sdd)
        if self.gammas.abs().max() >= math.pi / 2:
            raise ValueError("the detector spans a fan angle of 180 degrees or more; reduce "
                             "n_detectors * detector_spacing")
        h = math.ceil(self.support_radius) + 1
        self._u = torch.arange(-h, h + 1, dtype=torch.float64)

    @property
    def fov_radius(self) -> float:
        """Radius (mm) of the circle every projection sees: ``R sin(max |fan angle|)``."""
        return self.source_distance * math.sin(float(self.gammas.abs().max()))

    def _rays(self, idx):
        b = self.angles[idx].view(-1, 1)
        g = self.gammas.view(1, -1)
        r = self.source_distance / self.pixel_size
        # closest point to the centre: R sin g (cos g e - sin g d); direction sin g e + cos g d
        pe, pd = r * torch.sin(g) * torch.cos(g), -r * torch.sin(g) ** 2
        de, dd = torch.sin(g), torch.cos(g)
        cb, sb = torch.cos(b), torch.sin(b)
        # (x, y up) = a_e e + a_d d with e = (cos b, sin b), d = (sin b, -cos b); col = c + x,
        # row = c - y
        base = torch.stack((self.center + pe * cb + pd * sb, self.center - pe * sb + pd * cb), -1)
        d = torch.stack((de * cb + dd * sb, -de * sb + dd * cb), -1)
        return base, d

    def __repr__(self) -> str:
        return (f"FanBeam(image_size={self.image_size}, n_angles={self.n_angles}, "
                f"source_distance={self.source_distance}, "
                f"detector_distance={self.detector_distance}, n_detectors={self.n_detectors}, "
                f"detector_spacing={self.detector_spacing}, detector={self.detector!r}, "
                f"pixel_size={self.pixel_size}, circle={self.circle})")
