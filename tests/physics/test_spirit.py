"""SPIRiT calibration and the image-domain operator G (physics/spirit.py).

References nobody here wrote: torch's ``conv2d`` with circular padding and scipy's
``convolve2d(boundary='wrap')`` for the k-space convolution (the image-domain product is a
CIRCULAR k-space convolution, so the references wrap around too), numpy's ``lstsq``/``solve``
on a calibration matrix assembled pixel by pixel for the calibration, sigpy's Shepp-Logan
phantom and birdcage coils for data.
"""
import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.spirit import SpiritOperator, spirit_calibrate

sigpy = pytest.importorskip("sigpy")
import sigpy.mri  # noqa: E402


def _c(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


def _phantom_kspace(H, W, C):
    img = torch.from_numpy(sigpy.shepp_logan((H, W))).to(torch.complex64)
    smaps = torch.from_numpy(sigpy.mri.birdcage_maps((C, H, W))).to(torch.complex64)
    return fft2c(smaps * img)


def _circular_conv_reference(k, kernel):
    """(G k)_c = sum_{c', a, b} kernel[c, c', a, b] k_{c'}(p + (a - r, b - r)), wrapping around."""
    r = kernel.shape[-1] // 2
    return F.conv2d(F.pad(k, (r, r, r, r), mode="circular"), kernel)


@pytest.mark.parametrize("shape", [(16, 12), (15, 9), (10, 13)])
def test_image_domain_G_equals_circular_kspace_convolution(shape):
    H, W = shape
    C, kw = 3, 5
    kernel = _c((C, C, kw, kw), 1)
    k = _c((2, C, H, W), 2)
    op = SpiritOperator(kernel, (H, W))
    ref = _circular_conv_reference(k, kernel)
    got = op.apply_kspace(k)
    assert got.dtype == torch.complex64
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # the image-domain forward is the same operator seen through F
    torch.testing.assert_close(fft2c(op.forward(ifft2c(k))), ref, rtol=1e-4,
                               atol=1e-4 * ref.abs().max().item())


def test_G_matches_scipy_wrapped_convolution():
    H, W, C, kw = 14, 11, 2, 3
    kernel = _c((C, C, kw, kw), 3)
    k = _c((C, H, W), 4)
    op = SpiritOperator(kernel, (H, W))
    kn, wn = k.numpy(), kernel.numpy()
    ref = np.stack([
        sum(scipy.signal.convolve2d(kn[j], wn[i, j, ::-1, ::-1], mode="same", boundary="wrap")
            for j in range(C))
        for i in range(C)
    ])
    np.testing.assert_allclose(op.apply_kspace(k).numpy(), ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


def test_batched_kernels_and_data_broadcast():
    C, H, W = 2, 12, 12
    kernel = _c((3, C, C, 3, 3), 5)
    k = _c((3, C, H, W), 6)
    got = SpiritOperator(kernel, (H, W)).apply_kspace(k)
    for b in range(3):
        torch.testing.assert_close(got[b], _circular_conv_reference(k[b:b + 1], kernel[b])[0],
                                   rtol=1e-4, atol=1e-4)


# adjoint dot product, normal == (G - I)^H (G - I), linearity and dtype of G and G - I:
# test_operator_properties.py


def _calibration_reference(acs, kw, lam):
    """numpy: rows built pixel by pixel; per target coil ridge solve (or lstsq for lam=0)."""
    C, h, w = acs.shape
    r = kw // 2
    rows = [acs[:, i:i + kw, j:j + kw].reshape(-1) for i in range(h - kw + 1)
            for j in range(w - kw + 1)]
    A = np.array(rows)
    kernel = np.zeros((C, C * kw * kw), dtype=np.complex128)
    for c in range(C):
        t = c * kw * kw + r * kw + r
        keep = np.arange(C * kw * kw) != t
        Ac, yc = A[:, keep], A[:, t]
        if lam == 0:
            sol = np.linalg.lstsq(Ac, yc, rcond=None)[0]
        else:
            AtA = Ac.conj().T @ Ac
            lamp = lam * np.linalg.norm(AtA, "fro") / AtA.shape[0]
            sol = np.linalg.solve(AtA + lamp * np.eye(AtA.shape[0]), Ac.conj().T @ yc)
        kernel[c, keep] = sol
    return kernel.reshape(C, C, kw, kw)


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.16])
def test_calibration_matches_pixelwise_numpy_reference(lam):
    C, kw = 3, 3
    k = _phantom_kspace(24, 24, C)
    size = (10, 12)
    kernel = spirit_calibrate(k, size, kw, lam)
    acs = k[:, 12 - 5:12 + 5, 12 - 6:12 + 6].numpy().astype(np.complex128)
    ref = _calibration_reference(acs, kw, lam)
    assert kernel.shape == (C, C, kw, kw) and kernel.dtype == torch.complex64
    np.testing.assert_allclose(kernel.numpy(), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_calibration_on_phantom_is_self_consistent_and_excludes_centre():
    H = W = 32
    C, kw = 4, 5
    k = _phantom_kspace(H, W, C)
    kernel = spirit_calibrate(k, calib_width=16, kernel_width=kw, lam=0.01)
    r = kw // 2
    diag = torch.diagonal(kernel[:, :, r, r])
    assert torch.all(diag == 0)  # own centre tap excluded
    assert torch.all(kernel[:, :, r, r].abs().sum(1) > 0)  # other coils' centre taps used
    op = SpiritOperator(kernel, (H, W))
    rel = (op.apply_kspace(k) - k).norm() / k.norm()
    assert rel < 0.03
    # same check in the image domain (F is unitary)
    x = ifft2c(k)
    assert abs((op.residual(x).norm() / x.norm()) - rel) < 1e-4
    # a kernel calibrated on other coils' data does not explain this data
    other = spirit_calibrate(_c((C, H, W), 13), calib_width=16, kernel_width=kw)
    rel_other = (SpiritOperator(other, (H, W)).residual(x).norm() / x.norm())
    assert rel_other > 10 * rel


def test_calibration_batched_equals_individual_and_acs_input():
    C, kw = 2, 3
    k = torch.stack([_phantom_kspace(20, 20, C), _c((C, 20, 20), 14)])
    batched = spirit_calibrate(k, 8, kw)
    assert batched.shape == (2, C, C, kw, kw)
    for b in range(2):
        torch.testing.assert_close(batched[b], spirit_calibrate(k[b], 8, kw),
                                   rtol=1e-5, atol=1e-6)
    # passing the ACS block itself with calib_width=None gives the same kernel
    acs = k[0][:, 6:14, 6:14]
    torch.testing.assert_close(spirit_calibrate(acs, None, kw), batched[0], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_value_error():
    k = _c((2, 16, 16), 15)
    with pytest.raises(ValueError, match="kernel_width"):
        spirit_calibrate(k, 8, 4)
    with pytest.raises(ValueError, match="kernel_width"):
        spirit_calibrate(k, 6, 7)
    with pytest.raises(ValueError, match="calib_width"):
        spirit_calibrate(k, 24, 3)
    with pytest.raises(ValueError, match="complex"):
        spirit_calibrate(k.real, 8, 3)
    with pytest.raises(ValueError, match="calib_width"):
        spirit_calibrate(k, "8", 3)
    with pytest.raises(ValueError, match="kernel"):
        SpiritOperator(_c((2, 3, 3, 3), 0), (16, 16))
    with pytest.raises(ValueError, match="kernel"):
        SpiritOperator(_c((2, 2, 4, 4), 0), (16, 16))
    with pytest.raises(ValueError, match="complex"):
        SpiritOperator(_c((2, 2, 3, 3), 0).real, (16, 16))
    op = SpiritOperator(_c((2, 2, 3, 3), 0), (16, 16))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2, 16, 16\]"):
        op.forward(_c((3, 16, 16), 0))


def test_double_precision_is_kept():
    C, H, W = 2, 10, 10
    k = _c((C, H, W), 16).to(torch.complex128)
    kernel = spirit_calibrate(k, 6, 3)
    assert kernel.dtype == torch.complex128
    op = SpiritOperator(kernel, (H, W))
    assert op.forward(ifft2c(k)).dtype == torch.complex128
    ref = _circular_conv_reference(k[None], kernel)[0]
    torch.testing.assert_close(op.apply_kspace(k), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_follows_inputs_on_cuda():
    k = _phantom_kspace(16, 16, 2).cuda()
    kernel = spirit_calibrate(k, 8, 3)
    op = SpiritOperator(kernel, (16, 16))
    assert kernel.device == op.image_kernel.device == op.normal(ifft2c(k)).device == k.device
    torch.testing.assert_close(kernel.cpu(), spirit_calibrate(k.cpu(), 8, 3), rtol=1e-4,
                               atol=1e-5)


def test_calibration_survives_a_thread_count_change():
    """torch 2.13 CPU: LU solves break after set_num_threads; calibration must not."""
    acs = _c((4, 16, 16), 70)
    before = spirit_calibrate(acs, 16, 5, lam=0.01)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.randn(64, 64) @ torch.randn(64, 64)
        torch.set_num_threads(max(n, 2))
        after = spirit_calibrate(acs, 16, 5, lam=0.01)
    finally:
        torch.set_num_threads(n)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
