"""Centered FFTs against NumPy's shifted FFTs (against fastMRI's `fft2c`/`ifft2c`:
test_fastmri_reference.py)."""
import numpy as np
import pytest
import torch

from medrecon.physics.fft import fft1c, fft2c, fftc, ifft1c, ifft2c, ifftc, modulation


def _rand(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


@pytest.mark.parametrize("shape", [(16, 640, 320)[:1] + (64, 32), (3, 15, 9), (2, 2, 8, 6)])
def test_roundtrip_and_orthonormal(shape):
    x = _rand(shape)
    k = fft2c(x)
    torch.testing.assert_close(ifft2c(k), x, rtol=1e-5, atol=1e-5)
    # Parseval: orthonormal scaling
    torch.testing.assert_close(k.abs().pow(2).sum(), x.abs().pow(2).sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [8, 9, 10, 31])
@pytest.mark.parametrize("dim", [-1, -2, 0])
def test_1d_variants_match_numpy(n, dim):
    x = _rand((n, n + 2 if n % 2 == 0 else n + 1, 3) if dim == 0 else (3, n, n))
    xn = x.numpy()
    ref = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(xn, axes=dim), axis=dim, norm="ortho"),
                          axes=dim)
    refi = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(xn, axes=dim), axis=dim, norm="ortho"),
                           axes=dim)
    np.testing.assert_allclose(fft1c(x, dim).numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ifft1c(x, dim).numpy(), refi, rtol=1e-4, atol=1e-5)


def test_fftc_over_two_dims_is_fft2c():
    x = _rand((2, 12, 10))
    torch.testing.assert_close(fftc(x, (-2, -1)), fft2c(x))
    torch.testing.assert_close(ifftc(x, (-2, -1)), ifft2c(x))


def test_modulation_identity():
    c, s = modulation((6, 8))
    x = _rand((6, 8))
    shifted = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x), norm="ortho"))
    torch.testing.assert_close(s * c * torch.fft.fft2(c * x, norm="ortho"), shifted)
    with pytest.raises(ValueError, match="even"):
        modulation((5, 8))


def test_complex128_and_dtype_follow_input():
    x = _rand((4, 6)).to(torch.complex128)
    assert fft2c(x).dtype == torch.complex128


def test_bad_input():
    with pytest.raises(ValueError, match="complex"):
        fft2c(torch.randn(4, 4))
    with pytest.raises(ValueError, match="at least 2 dims"):
        fft2c(torch.randn(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="torch.Tensor"):
        fft2c(np.zeros((4, 4), np.complex64))
