"""Centered orthonormal FFTs on complex tensors (fastMRI's `fft2c` convention).

fastMRI computes ``fftshift(fft(ifftshift(x)))`` with two full-size ``roll`` copies per call.
For an even length N the two shifts are a modulation instead:

    fftshift(fft(ifftshift(x)))[k] = (-1)^(N/2) * (-1)^k * fft((-1)^n x[n])[k]

so the centered transform is ``s * c * fft(c * x)`` with the checkerboard ``c = (-1)^n`` and the
sign ``s = (-1)^(N/2)``.  ``c`` and ``s`` are real, so they fold into any elementwise product the
caller already does (coil maps, masks): see `modulation` and the MRI operators.  Odd lengths fall
back to explicit shifts.
"""
from __future__ import annotations

import functools

import torch

__all__ = [
    "fft2c",
    "ifft2c",
    "fft1c",
    "ifft1c",
    "fftc",
    "ifftc",
    "modulation",
    "check_complex",
]


def check_complex(x: torch.Tensor, name: str = "x", min_dim: int = 1) -> None:
    """Raise a ValueError unless ``x`` is a complex tensor with at least ``min_dim`` dims."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_complex():
        raise ValueError(
            f"{name} must be a complex tensor (torch.complex64/complex128), got dtype {x.dtype}; "
            "convert a fastMRI-style [..., 2] real/imag tensor with torch.view_as_complex"
        )
    if x.ndim < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(x.shape)}")


@functools.lru_cache(maxsize=64)
def _checker(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    c = torch.ones(n, dtype=dtype, device=device)
    c[1::2] = -1
    return c


def modulation(
    shape: tuple[int, ...], device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, float]:
    """Checkerboard ``c`` (broadcastable to ``shape``, last ``len(shape)`` dims) and sign ``s``.

    For even sizes the centered transform over those dims equals ``s * c * fft(c * x)``
    (orthonormal) and its inverse ``s * c * ifft(c * x)``.  ``c`` is real, ``c*c == 1``.
    """
    if any(n % 2 for n in shape):
        raise ValueError(f"modulation needs even sizes, got {shape}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    c = torch.ones((), dtype=dtype, device=device)
    sign = 1.0
    for i, n in enumerate(shape):
        view = [1] * len(shape)
        view[i] = n
        c = c * _checker(n, device, dtype).view(view)
        sign *= -1.0 if (n // 2) % 2 else 1.0
    return c, sign


def _centered(x: torch.Tensor, dims: tuple[int, ...], inverse: bool) -> torch.Tensor:
    dims = tuple(d % x.ndim for d in dims)
    sizes = tuple(x.shape[d] for d in dims)
    fn = torch.fft.ifftn if inverse else torch.fft.fftn
    if all(n % 2 == 0 for n in sizes):
        c, s = modulation(sizes, x.device, x.real.dtype)
        # place c on the transformed dims
        shape = [1] * x.ndim
        for d, n in zip(dims, sizes):
            shape[d] = n
        c = c.reshape(shape)
        y = fn(x * c, dim=dims, norm="ortho")
        return y.mul_(c * s) if s != 1.0 else y.mul_(c)
    y = torch.fft.ifftshift(x, dim=dims)
    y = fn(y, dim=dims, norm="ortho")
    return torch.fft.fftshift(y, dim=dims)


def fftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centered orthonormal FFT over ``dims`` of a complex tensor."""
    check_complex(x, "x", min_dim=len(dims))
    return _centered(x, dims, inverse=False)


def ifftc(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Centered orthonormal inverse FFT over ``dims`` of a complex tensor."""
    check_complex(x, "x", min_dim=len(dims))
    return _centered(x, dims, inverse=True)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT over the last two dims; equals ``fastmri.fft2c``."""
    check_complex(x, "x", min_dim=2)
    return _centered(x, (-2, -1), inverse=False)


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT over the last two dims; equals ``fastmri.ifft2c``."""
    check_complex(x, "x", min_dim=2)
    return _centered(x, (-2, -1), inverse=True)


def fft1c(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Centered orthonormal 1-D FFT along ``dim``."""
    check_complex(x, "x", min_dim=1)
    return _centered(x, (dim,), inverse=False)


def ifft1c(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Centered orthonormal 1-D inverse FFT along ``dim``."""
    check_complex(x, "x", min_dim=1)
    return _centered(x, (dim,), inverse=True)
