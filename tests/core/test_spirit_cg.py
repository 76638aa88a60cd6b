"""SPIRiT-CG (medrecon/spirit_cg.py) on simulated multi-coil data.

Data: sigpy's Shepp-Logan phantom with sigpy birdcage coils, undersampled by fastMRI's
equispaced 4x mask (exactly 1/4 of the columns, fully sampled centre); image error measured
with fastMRI's ``evaluate.nmse`` on RSS images from ``fastmri.rss_complex``.  The least-squares
problem itself is checked against scipy's dense ``lstsq`` on a tiny case whose SPIRiT matrix is
assembled from torch ``conv2d`` (circular), independently of the image-domain operator.
"""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.spirit import spirit_calibrate
from medrecon.spirit_cg import spirit_cg

sigpy = pytest.importorskip("sigpy")
import sigpy.mri  # noqa: E402


@pytest.fixture(scope="module")
def fastmri():
    """fastMRI (mask, nmse, rss); only the test that compares with it skips without it."""
    return pytest.importorskip("fastmri")


def _phantom_kspace(H, W, C):
    img = torch.from_numpy(sigpy.shepp_logan((H, W))).to(torch.complex64)
    smaps = torch.from_numpy(sigpy.mri.birdcage_maps((C, H, W))).to(torch.complex64)
    return fft2c(smaps * img)


def _equispaced_mask(W, R, center):
    m = torch.zeros(1, W, dtype=torch.bool)
    m[:, ::R] = True
    m[:, W // 2 - center // 2:W // 2 - center // 2 + center] = True
    return m


def _rss(fastmri, x):
    return fastmri.rss_complex(torch.view_as_real(x), dim=-3).numpy()


def test_spirit_cg_beats_zero_filling_and_keeps_data(fastmri):
    from fastmri.data.subsample import EquispacedMaskFractionFunc
    from fastmri.evaluate import nmse

    H = W = 64
    C = 6
    k = _phantom_kspace(H, W, C)
    m, n_low = EquispacedMaskFractionFunc(center_fractions=[0.125], accelerations=[4])(
        (1, H, W, 2), seed=0)
    mask = m.reshape(1, W).bool()
    assert int(mask.sum()) == W // 4 and n_low == 8
    ref = _rss(fastmri, ifft2c(k))
    zf = _rss(fastmri, ifft2c(k * mask))
    x = spirit_cg(k * mask, mask, calib_width=(H, n_low), kernel_width=5, max_iter=30)
    assert x.shape == k.shape and x.dtype == torch.complex64
    err_zf, err = nmse(ref, zf), nmse(ref, _rss(fastmri, x))
    assert err < 0.25 * err_zf, (err, err_zf)
    kx = fft2c(x)
    m = mask.expand(H, W)
    torch.testing.assert_close(kx[..., m], k[..., m], rtol=0, atol=1e-5 * k.abs().max().item())


def test_spirit_cg_solves_the_spirit_least_squares_problem():
    """min_u ||(G - I)(y + P_u u)||^2 against scipy lstsq on the dense k-space SPIRiT matrix."""
    H, W, C, kw = 12, 10, 2, 3
    k = _phantom_kspace(H, W, C)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[:, ::2] = True
    mask[3:9, 2:8] = True
    y = k * mask
    kernel = spirit_calibrate(k, (6, 6), kw, lam=0.01)
    r = kw // 2
    n = C * H * W
    basis = torch.eye(n, dtype=torch.complex64).reshape(n, C, H, W)
    Gk = F.conv2d(F.pad(basis, (r, r, r, r), mode="circular"), kernel)  # G on every basis vector
    D = (Gk - basis).reshape(n, n).T.numpy().astype(np.complex128)  # (G - I), column j = e_j
    unknown = ~mask.expand(C, H, W).reshape(-1).numpy()
    u, *_ = scipy.linalg.lstsq(D[:, unknown], -D @ y.reshape(-1).numpy().astype(np.complex128))
    full_ref = y.reshape(-1).numpy().astype(np.complex128)
    full_ref[unknown] = u
    x = spirit_cg(y, mask, kernel=kernel, max_iter=100, tol=0.0)
    full = fft2c(x).reshape(-1).numpy().astype(np.complex128)
    obj_ref = np.linalg.norm(D @ full_ref) ** 2
    obj = np.linalg.norm(D @ full) ** 2
    assert obj <= obj_ref * (1 + 1e-3) + 1e-8 * np.linalg.norm(full_ref) ** 2
    np.testing.assert_allclose(full, full_ref, atol=1e-4 * np.abs(full_ref).max())


def test_batched_slices_equal_individual_and_given_kernel():
    H = W = 24
    C = 3
    k = torch.stack([_phantom_kspace(H, W, C), _phantom_kspace(H, W, C).flip(-1)])
    mask = _equispaced_mask(W, 3, 8)
    xb = spirit_cg(k * mask, mask, calib_width=(16, 8), kernel_width=3, max_iter=10)
    for b in range(2):
        xi = spirit_cg(k[b] * mask, mask, calib_width=(16, 8), kernel_width=3, max_iter=10)
        torch.testing.assert_close(xb[b], xi, rtol=1e-4, atol=1e-5)
    kernel = spirit_calibrate(k * mask, (16, 8), 3)
    xk = spirit_cg(k * mask, mask, kernel=kernel, max_iter=10)
    torch.testing.assert_close(xk, xb, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_value_error():
    H = W = 16
    k = _phantom_kspace(H, W, 2)
    mask = _equispaced_mask(W, 2, 6)
    with pytest.raises(ValueError, match="complex"):
        spirit_cg(k.real, mask, calib_width=(H, 6), kernel_width=3)
    with pytest.raises(ValueError, match="mask"):
        spirit_cg(k, torch.ones(1, W + 1, dtype=torch.bool), calib_width=6, kernel_width=3)
    with pytest.raises(ValueError, match="mask"):
        spirit_cg(k, torch.ones(3, 1, W, dtype=torch.bool), calib_width=6, kernel_width=3)
    with pytest.raises(ValueError, match="kernel_width"):
        spirit_cg(k, mask, calib_width=(H, 6), kernel_width=4)
    with pytest.raises(ValueError, match="kernel_width"):
        spirit_cg(k, mask, calib_width=(H, 6), kernel_width=7)
    with pytest.raises(ValueError, match="calib_width"):
        spirit_cg(k, torch.ones(1, W, dtype=torch.bool), calib_width=24, kernel_width=3)
    with pytest.raises(ValueError, match="not fully sampled"):
        spirit_cg(k, mask, calib_width=12, kernel_width=3)
    with pytest.raises(ValueError, match="kernel"):
        spirit_cg(k, mask, kernel=torch.zeros(3, 3, 3, 3, dtype=torch.complex64))
    bad = k.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        spirit_cg(bad, mask, calib_width=(H, 6), kernel_width=3)


def test_even_kernel_width_is_reported_before_the_calibration_check():
    k = _phantom_kspace(16, 16, 2)
    with pytest.raises(ValueError, match="kernel_width"):
        spirit_cg(k, _equispaced_mask(16, 2, 4), calib_width=12, kernel_width=6)
