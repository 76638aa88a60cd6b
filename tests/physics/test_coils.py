"""ESPIRiT against SigPy's EspiritCalib and the true coil subspace (rss against fastMRI's:
test_fastmri_reference.py)."""
import numpy as np
import pytest
import torch

from medrecon.physics.coils import espirit, sense_combine
from medrecon.physics.fft import fft2c

sp = pytest.importorskip("sigpy")
import sigpy.mri  # noqa: E402


def _phantom(n=64, coils=8, noise=1e-3, seed=0):
    """Shepp-Logan ``n`` (int or (H, W)) with smooth phase in SigPy's birdcage maps."""
    h, w = (n, n) if isinstance(n, int) else n
    img = sp.shepp_logan((h, w)).astype(np.complex64)
    # smooth phase so maps and image are not trivially real
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    img = img * np.exp(1j * (0.8 * xx + 0.5 * yy * yy)).astype(np.complex64)
    mps = sp.mri.birdcage_maps((coils, h, w)).astype(np.complex64)
    ksp = fft2c(torch.from_numpy(mps * img))
    g = torch.Generator().manual_seed(seed)
    ksp = ksp + noise * torch.randn(ksp.shape, dtype=torch.complex64, generator=g)
    obj = torch.from_numpy(np.abs(img) > 0.05)
    return ksp, torch.from_numpy(mps), obj


@pytest.mark.parametrize("n,coils,kw,cw", [(64, 8, 6, 24), (48, 6, 5, 20), (40, 4, 4, 16)])
def test_matches_sigpy_espiritcalib(n, coils, kw, cw):
    ksp, _, obj = _phantom(n, coils)
    ours = espirit(ksp, calib_width=cw, kernel_width=kw)
    ref = sp.mri.app.EspiritCalib(ksp.numpy(), calib_width=cw, kernel_width=kw, thresh=0.02,
                                  crop=0.95, show_pbar=False).run()
    ref = torch.from_numpy(ref)
    inner = (ours.conj() * ref).sum(-3).abs()
    assert inner[obj].min() >= 0.98
    # at these sizes every pixel is a grid point and the power method is SigPy's (100 steps
    # from ones): the maps agree directly (same phase reference and crop), to round-off
    diff = (ours - ref).abs().amax(0)[obj]
    assert diff.quantile(0.99) < 1e-5 and diff.median() < 1e-6
    assert ((ours.abs().sum(0) > 0) == (ref.abs().sum(0) > 0)).float().mean() > 0.999


def test_recovers_true_coil_subspace():
    ksp, true, obj = _phantom(64, 8)
    maps = espirit(ksp)
    tn = true / true.abs().pow(2).sum(0, keepdim=True).sqrt()
    inner = (maps.conj() * tn).sum(0).abs()
    assert inner[obj].mean() > 0.99 and inner[obj].min() > 0.95
    norm = maps.abs().pow(2).sum(0).sqrt()
    torch.testing.assert_close(norm[obj], torch.ones_like(norm[obj]), rtol=0, atol=1e-4)
    assert (maps[0].imag.abs() < 1e-5).all() and (maps[0].real >= -1e-6).all()


def test_batched_equals_single_calls_and_follows_dtype():
    k1, _, _ = _phantom(40, 4, seed=1)
    k2, _, _ = _phantom(40, 4, seed=2)
    k2 = k2 * 3.0
    batch = torch.stack([k1, k2]).unsqueeze(0)  # [1, 2, C, H, W]
    maps, eig = espirit(batch, calib_width=16, kernel_width=4, return_eigenvalue=True)
    assert maps.shape == batch.shape and maps.dtype == torch.complex64
    assert eig.shape == (1, 2, 40, 40)
    for i, k in enumerate((k1, k2)):
        torch.testing.assert_close(maps[0, i], espirit(k, calib_width=16, kernel_width=4),
                                   rtol=0, atol=1e-4)
    m128 = espirit(k1.to(torch.complex128), calib_width=16, kernel_width=4)
    assert m128.dtype == torch.complex128


def test_undersampled_outside_calibration_gives_same_maps():
    # only the centre is used: zeroing k-space outside the calibration region changes nothing
    ksp, _, obj = _phantom(64, 8)
    cut = torch.zeros_like(ksp)
    cut[..., 20:44, 20:44] = ksp[..., 20:44, 20:44]
    torch.testing.assert_close(espirit(cut)[:, obj], espirit(ksp)[:, obj], rtol=0, atol=1e-5)


def test_sense_combine():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, 6, dtype=torch.complex64, generator=g)
    s = torch.randn(5, 8, 6, dtype=torch.complex64, generator=g)
    torch.testing.assert_close(sense_combine(x, s), (s.conj() * x).sum(-3))
    with pytest.raises(ValueError, match="last three dims"):
        sense_combine(x, s[:4])


def test_bad_input():
    ksp, _, _ = _phantom(32, 4)
    with pytest.raises(ValueError, match="complex"):
        espirit(ksp.real)
    with pytest.raises(ValueError, match="at least 3 dims"):
        espirit(ksp[0])
    with pytest.raises(ValueError, match="calib_width"):
        espirit(ksp, calib_width=40)
    with pytest.raises(ValueError, match="kernel_width"):
        espirit(ksp, calib_width=8, kernel_width=10)
    with pytest.raises(ValueError, match="thresh"):
        espirit(ksp, thresh=1.5)
    with pytest.raises(ValueError, match="crop"):
        espirit(ksp, crop=-0.1)
    bad = ksp.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        espirit(bad)
