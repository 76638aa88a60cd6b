"""SPIRiT k-space self-consistency: kernel calibration and the operator G (Lustig & Pauly 2010).

SPIRiT (Lustig M, Pauly JM, "SPIRiT: Iterative self-consistent parallel imaging reconstruction
from arbitrary k-space", MRM 64(2):457-471, 2010) models every k-space sample of every coil as
a linear combination of its neighbours in all coils, eq. [3]:

    x_c(r) = sum_{c', d} g_{c c'}(d) x_{c'}(r + d)        i.e.   x = G x.

Kernel convention (``kernel[..., c, c', a, b]``, shape ``[..., C, C, k, k]``): target coil ``c``,
source coil ``c'``, tap ``(a, b)`` weighs the sample at offset ``(a - k//2, b - k//2)`` along
``(H, W)`` -- a *correlation*, which is exactly what ``torch.nn.functional.conv2d`` computes with
``weight = kernel`` and ``padding = k//2``.  The centre tap of a coil's own kernel is zero.

Calibration (`spirit_calibrate`), as in Lustig's ``calibSPIRiT.m`` and SPIRiT-Diffusion's
``src/calibrate.py::spirit_calibrate``: the k x k x C neighbourhoods of the fully sampled
calibration block are the rows of A; for target coil c the column of its centre sample is y_c and
is removed from A (A_c), and ``(A_c^H A_c + lambda' I) w_c = A_c^H y_c`` with
``lambda' = lam * ||A_c^H A_c||_F / n`` (n = C k^2 - 1).  All C systems are solved in one
batched call.  Default ``lam = 0.01`` is Lustig's demo value (``CalibTyk``, "0.01-0.05
recommended"); SPIRiT-Diffusion prepares its kernels with ``lam = 0.16``
(`LAM_SPIRIT_DIFFUSION`), a stronger regulariser for noisy data.

Image-domain operator (`SpiritOperator`): with centered orthonormal FFTs over N = H*W samples,
circular k-space convolution with ``h`` is multiplication of the coil images by
``sqrt(N) * ifft2c(zeropad(h))``; correlation with the kernel is convolution with its flip.  So G
is a per-pixel C x C coil-mixing matrix -- the same operator as the (circular) 7x7 k-space
convolution, at C^2 multiply-adds per pixel and no FFT.
"""
from __future__ import annotations

import math

import torch

from .fft import check_complex, fft2c, ifft2c

__all__ = ["spirit_calibrate", "SpiritOperator", "LAM_SPIRIT", "LAM_SPIRIT_DIFFUSION"]

LAM_SPIRIT = 0.01  # Lustig's demo_SPIRiT CalibTyk
LAM_SPIRIT_DIFFUSION = 0.16  # SPIRiT-Diffusion data_prepare/estimate_kernel.py


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(u, int) and not isinstance(u, bool) for u in v)):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{name} must be an int or a pair of ints (H, W), got {v!r}")


def _check_kernel_width(kernel_width) -> int:
    if not isinstance(kernel_width, int) or isinstance(kernel_width, bool) or kernel_width < 1 \
            or kernel_width % 2 == 0:
        raise ValueError(f"kernel_width must be an odd positive int, got {kernel_width!r}")
    return kernel_width


def center_block(kspace: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Central ``size`` block of ``kspace[..., H, W]`` (centre index H//2, W//2, fastMRI style)."""
    H, W = kspace.shape[-2:]
    h, w = size
    if h > H or w > W:
        raise ValueError(
            f"calib_width {size} is larger than the k-space matrix ({H}, {W}); "
            "use a calibration region no larger than the matrix"
        )
    r0, c0 = H // 2 - h // 2, W // 2 - w // 2
    return kspace[..., r0:r0 + h, c0:c0 + w]


def spirit_calibrate(
    kspace: torch.Tensor,
    calib_width: int | tuple[int, int] | None = 24,
    kernel_width: int = 7,
    lam: float = LAM_SPIRIT,
) -> torch.Tensor:
    """Calibrate a SPIRiT kernel ``[..., C, C, k, k]`` from fully sampled central k-space.

    ``kspace`` is multi-coil k-space ``[..., C, H, W]`` (complex); its central ``calib_width``
    block (int, or ``(h, w)``, e.g. ``(H, 24)`` for a column-mask ACS) must be fully sampled.
    ``calib_width=None`` uses the whole input as the calibration block (pass an ACS block).
    Leading dims are independent calibrations.  Computed in double precision, returned in the
    input's dtype and device.
    """
    check_complex(kspace, "kspace", min_dim=3)
    k = _check_kernel_width(kernel_width)
    size = tuple(kspace.shape[-2:]) if calib_width is None else _pair(calib_width, "calib_width")
    if min(size) < k:
        raise ValueError(
            f"kernel_width ({k}) must not exceed calib_width {size}: the calibration block must "
            "hold at least one full kernel neighbourhood"
        )
    if not (isinstance(lam, (int, float)) and lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    acs = center_block(kspace, size)
    if not torch.isfinite(torch.view_as_real(acs)).all():
        raise ValueError("kspace contains NaN or Inf in the calibration region")
    C = acs.shape[-3]
    lead = acs.shape[:-3]
    cdtype = torch.complex128
    a = acs.to(cdtype)
    # rows: every k x k x C neighbourhood of the block -> [..., P, C*k*k], columns (c', a, b)
    patches = a.unfold(-2, k, 1).unfold(-2, k, 1)  # [..., C, Ph, Pw, k, k]
    patches = patches.movedim(-5, -3)  # [..., Ph, Pw, C, k, k]
    A = patches.reshape(*lead, -1, C * k * k)
    AtA = A.mH @ A  # [..., n, n]
    n = C * k * k
    centre = (k // 2) * k + k // 2
    target = torch.arange(C, device=a.device) * (k * k) + centre  # [C]
    all_idx = torch.arange(n, device=a.device)
    keep = all_idx.unsqueeze(0) != target.unsqueeze(1)  # [C, n]
    idx = all_idx.expand(C, n)[keep].reshape(C, n - 1)  # columns kept per target coil
    sys = AtA[..., idx[:, :, None], idx[:, None, :]]  # [..., C, n-1, n-1]
    rhs = AtA[..., idx, target[:, None]].unsqueeze(-1)  # [..., C, n-1, 1]
    fro = torch.linalg.matrix_norm(sys, ord="fro")  # [..., C]
    reg = (lam * fro / (n - 1)).to(torch.float64)
    eye = torch.eye(n - 1, dtype=cdtype, device=a.device)
    w = _hpd_solve(sys + reg[..., None, None] * eye, rhs)[..., 0]  # [..., C, n-1]
    full = torch.zeros(*lead, C, n, dtype=cdtype, device=a.device)
    full = full.scatter(-1, idx.expand(*lead, C, n - 1), w)
    return full.reshape(*lead, C, C, k, k).to(kspace.dtype)


def _hpd_solve(m: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve Hermitian positive (semi-)definite systems: Cholesky, least squares if singular.

    Not ``torch.linalg.solve``: with torch 2.13's CPU build, LU solves (MKL ``getrf/getrs``)
    fail or return wrong answers after ``torch.set_num_threads`` has changed the thread count,
    while Cholesky and least squares are unaffected.  Cholesky is also the cheaper choice here.
    """
    chol, info = torch.linalg.cholesky_ex(m)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(m, rhs).solution


class SpiritOperator:
    """SPIRiT ``G`` as a per-pixel coil-mixing matrix on coil images ``[..., C, H, W]``.

    ``kernel [..., C, C, k, k]`` (see module docstring for the convention), ``shape = (H, W)``.
    ``forward`` = G x, ``adjoint`` = G^H x, ``residual`` = (G - I) x,
    ``normal`` = (G - I)^H (G - I) x, all in the image domain; ``apply_kspace`` = F G F^H k.
    ``image_kernel`` ``[..., C, C, H, W]`` holds the per-pixel matrices.
    """

    def __init__(self, kernel: torch.Tensor, shape: tuple[int, int]):
        check_complex(kernel, "kernel", min_dim=4)
        C, C2, k1, k2 = kernel.shape[-4:]
        if C != C2 or k1 != k2 or k1 % 2 == 0:
            raise ValueError(
                "kernel must have shape [..., C, C, k, k] with odd k, got "
                f"{tuple(kernel.shape)}"
            )
        H, W = _pair(shape, "shape")
        if H < k1 or W < k1:
            raise ValueError(f"shape {(H, W)} must be at least the kernel width {k1} per axis")
        if not torch.isfinite(torch.view_as_real(kernel)).all():
            raise ValueError("kernel contains NaN or Inf")
        self.kernel = kernel
        self.shape = (H, W)
        self.ncoils = int(C)
        r = k1 // 2
        pad = torch.zeros(*kernel.shape[:-2], H, W, dtype=kernel.dtype, device=kernel.device)
        # correlation with the kernel == circular convolution with its flip, centred at (H//2, W//2)
        pad[..., H // 2 - r:H // 2 + r + 1, W // 2 - r:W // 2 + r + 1] = kernel.flip(-2, -1)
        self.image_kernel = ifft2c(pad).mul_(math.sqrt(H * W))  # [..., C, C, H, W]
        self._normal_matrix = None

    def _check(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[-3:] != (
                self.ncoils, *self.shape):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must be coil data of shape [..., {self.ncoils}, {self.shape[0]}, "
                f"{self.shape[1]}], got {got}"
            )

    @staticmethod
    def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out[..., i, h, w] = sum_j m[..., i, j, h, w] x[..., j, h, w]``.

        Accumulated over the C source coils, each step a batched in-place product over all
        target coils and leading dims: the one-shot broadcast ``(m * x).sum`` materialises a
        C^2 H W temporary and is ~8x slower on CPU at 16 x 320 x 320 (memory-bound).
        """
        out = m[..., :, 0, :, :] * x[..., 0:1, :, :]
        for j in range(1, m.shape[-3]):
            out.addcmul_(m[..., :, j, :, :], x[..., j:j + 1, :, :])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``G x`` on coil images ``[..., C, H, W]``."""
        self._check(x, "x")
        return self._mix(self.image_kernel, x)

    __call__ = forward

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """``G^H x``: per pixel the conjugate transpose of the coil-mixing matrix.

        Computed as ``conj(sum_i G[i, j] conj(x_i))`` so no conjugated copy of G is stored.
        """
        self._check(x, "x")
        g, xc = self.image_kernel, x.conj()
        out = g[..., 0, :, :, :] * xc[..., 0:1, :, :]
        for i in range(1, g.shape[-4]):
            out.addcmul_(g[..., i, :, :, :], xc[..., i:i + 1, :, :])
        return out.conj_physical_()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``(G - I) x``: zero for coil images that are perfectly SPIRiT-consistent."""
        return self.forward(x) - x

    def residual_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """``(G - I)^H x``."""
        return self.adjoint(x) - x

    @property
    def normal_matrix(self) -> torch.Tensor:
        """Per-pixel ``(G - I)^H (G - I)`` ``[..., C, C, H, W]``, built (C^3 H W) on first use."""
        if self._normal_matrix is None:
            g = self.image_kernel
            eye = torch.eye(self.ncoils, dtype=g.dtype, device=g.device)
            m = g - eye[:, :, None, None]  # G - I, per pixel
            self._normal_matrix = torch.einsum(
                "...ijhw,...ilhw->...jlhw", m.conj(), m).contiguous()
        return self._normal_matrix

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``(G - I)^H (G - I) x``, the gradient of ``1/2 ||(G - I) x||^2`` (per-pixel matrix)."""
        self._check(x, "x")
        return self._mix(self.normal_matrix, x)

    def apply_kspace(self, k: torch.Tensor) -> torch.Tensor:
        """``F G F^H k`` on multi-coil k-space: the circular k-space convolution with the kernel."""
        self._check(k, "k")
        return fft2c(self.forward(ifft2c(k)))
