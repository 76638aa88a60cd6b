"""Fast ESPIRiT (physics/espirit_calib.py): the coarse-grid path against SigPy's EspiritCalib at
small even/odd sizes and at fastMRI size (slow), its power method against SigPy's, batching,
chunking and the step rule."""
import numpy as np
import pytest
import torch

from medrecon.physics.espirit_calib import _power_method, auto_step, espirit

from .test_coils import _phantom, sp


def _sigpy(ksp, **kw):
    return torch.from_numpy(sp.mri.app.EspiritCalib(ksp.numpy(), show_pbar=False, **kw).run())


def _agreement(ours, ref):
    return (ours.conj() * ref).sum(-3).abs()  # |<s, s_sigpy>| per pixel


@pytest.mark.parametrize("shape,step", [((64, 48), 2), ((65, 47), 2), ((65, 47), (3, 2))])
def test_interpolated_maps_match_sigpy(shape, step):
    ksp, _, obj = _phantom(shape, 8)
    ref = _sigpy(ksp, calib_width=20, kernel_width=5)
    ours = espirit(ksp, calib_width=20, kernel_width=5, step=step)
    inner = _agreement(ours, ref)[obj]
    assert inner.min() >= 0.99 and inner.quantile(0.01) > 0.999  # spec: >= 0.98
    # SigPy's conventions survive interpolation: unit norm, first coil real >= 0, same crop
    inside = ours.abs().sum(0) > 0
    norm = ours.abs().pow(2).sum(0).sqrt()[inside]
    torch.testing.assert_close(norm, torch.ones_like(norm), rtol=0, atol=1e-5)
    assert (ours[0].imag.abs() < 1e-6).all() and (ours[0].real >= 0).all()
    assert (inside == (ref.abs().sum(0) > 0)).float().mean() > 0.99


def test_every_pixel_path_is_sigpys_power_method():
    ksp, _, obj = _phantom((65, 47), 8)
    assert auto_step((65, 47), 5) == (1, 1)
    ref = _sigpy(ksp, calib_width=20, kernel_width=5)
    ours = espirit(ksp, calib_width=20, kernel_width=5)
    diff = (ours - ref).abs().amax(0)[obj]
    assert diff.max() < 1e-5


def test_power_method_equals_sigpys_iteration():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, 6, 6, dtype=torch.complex128, generator=g)
    A = m @ m.mH
    x = torch.ones(50, 6, 1, dtype=A.dtype)
    for _ in range(100):  # sigpy/alg.py PowerMethod._update with norm over the coil axis
        y = A @ x
        lam = torch.linalg.vector_norm(y, dim=-2, keepdim=True)
        x = y / lam
    v, ev = _power_method(A)
    torch.testing.assert_close(v, x[..., 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(ev, lam[:, 0, 0], rtol=1e-12, atol=0)
    assert (torch.linalg.eigvalsh(A)[:, -1] - ev).abs().max() < 1e-6


def test_batched_chunked_and_dtype():
    k1, _, _ = _phantom((40, 36), 4, seed=1)
    k2, _, _ = _phantom((40, 36), 4, seed=2)
    batch = torch.stack([k1, 3 * k2])[:, None]  # [2, 1, C, H, W]
    maps, eig = espirit(batch, calib_width=16, kernel_width=4, step=2, return_eigenvalue=True)
    assert maps.shape == batch.shape and eig.shape == (2, 1, 40, 36)
    assert maps.dtype == torch.complex64 and eig.dtype == torch.float32
    for i, k in enumerate((k1, 3 * k2)):
        one = espirit(k, calib_width=16, kernel_width=4, step=2, chunk=7)  # 7 grid points a step
        torch.testing.assert_close(maps[i, 0], one, rtol=0, atol=1e-4)
    m128 = espirit(k1.to(torch.complex128), calib_width=16, kernel_width=4, step=2)
    assert m128.dtype == torch.complex128
    torch.testing.assert_close(m128.to(torch.complex64), maps[0, 0], rtol=0, atol=1e-4)


def test_auto_step_and_bad_step():
    assert auto_step((640, 320), 6) == (8, 8)  # fastMRI brain k-space: 80 x 40 grid points
    assert auto_step((64, 48), 6) == (1, 1)
    assert auto_step((640, 320), 9) == (8, 5)  # wider kernels: faster A(x), finer grid
    ksp, _, _ = _phantom(32, 4)
    for bad in (0, (2, 0), 2.0, (1, 2, 3)):
        with pytest.raises(ValueError, match="step"):
            espirit(ksp, step=bad)
    with pytest.raises(ValueError, match="chunk"):
        espirit(ksp, chunk=0)


@pytest.mark.slow
def test_fastmri_size_matches_sigpy():
    """16 coils, 640 x 320 k-space (320 x 320 object), equispaced 4x, centre 0.08 (SigPy: ~1 min)"""
    from medrecon.datasets.simulate_mri import simulate_mri_volume
    from medrecon.physics.masks import sample_mask

    vol = simulate_mri_volume(n_slices=1, coils=16, size=(320, 320), seed=0)
    k = torch.from_numpy(vol["kspace"][0])
    k = k * sample_mask("equispaced_fraction", k.shape, 4, 0.08, seed=0).mask
    image = np.abs(vol["image"][0])
    obj = torch.from_numpy(image > 0.05 * image.max())
    ours = espirit(k)
    ref = _sigpy(k)
    inner = _agreement(ours, ref)[obj]
    assert inner.min() >= 0.98 and inner.quantile(0.01) > 0.9999
    assert ((ours.abs().sum(0) > 0) == (ref.abs().sum(0) > 0)).float().mean() > 0.999


@pytest.mark.parametrize("step", [None, 1])
def test_zero_kspace_gives_zero_maps(step):
    maps, eig = espirit(torch.zeros(2, 4, 96, 90, dtype=torch.complex64), step=step,
                        return_eigenvalue=True)
    assert (maps == 0).all() and (eig == 0).all()
