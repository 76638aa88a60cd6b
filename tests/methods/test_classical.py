"""Classical baselines through `reconstruct`, against SigPy and against zero-filling."""
import json

import numpy as np
import pytest
import torch

from medrecon.metrics import nmse
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import make_mask
from medrecon.physics.masks import acs_width
from medrecon.reconstruct import reconstruct
from medrecon.registry import get_method, list_methods, resolve_options

sp = pytest.importorskip("sigpy")
import sigpy.mri  # noqa: E402


@pytest.fixture(scope="module")
def data():
    n, c = 64, 8
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    img = sp.shepp_logan((n, n)).astype(np.complex64)
    img = img * np.exp(1j * (0.6 * xx + 0.3 * yy)).astype(np.complex64)
    mps = sp.mri.birdcage_maps((c, n, n)).astype(np.complex64)
    mps = mps / np.sqrt((np.abs(mps) ** 2).sum(0))
    g = torch.Generator().manual_seed(0)
    ksp = fft2c(torch.from_numpy(mps * img))
    ksp = ksp + 2e-3 * torch.randn(ksp.shape, dtype=torch.complex64, generator=g)
    mask = make_mask("equispaced_fraction", (n, n), 4, 0.16, seed=0)
    return ksp, torch.from_numpy(mps), mask, rss(ifft2c(ksp))


def test_every_method_returns_finite_images_with_zero_nfe(data):
    ksp, mps, mask, gt = data
    for spec in list_methods():
        if spec.kind != "classical" or spec.modality != "mri":  # CT methods take sinograms
            continue
        r = reconstruct(ksp, mask, spec.name)
        assert r.image.shape == (64, 64) and torch.isfinite(r.magnitude).all()
        assert r.nfe == 0 and r.seconds >= 0 and r.method == spec.name
        json.dumps(r.options)


@pytest.mark.parametrize("method", ["cg-sense", "l1-wavelet", "spirit-cg"])
def test_beats_zero_filled(data, method):
    ksp, mps, mask, gt = data
    zf = nmse(gt, reconstruct(ksp, mask, "zero-filled").magnitude)
    ours = nmse(gt, reconstruct(ksp, mask, method).magnitude)
    assert ours < 0.75 * zf


def test_cg_sense_equals_sigpy_sense_recon(data):
    ksp, mps, mask, _ = data
    r = reconstruct(ksp, mask, "cg-sense", smaps=mps, lam=0.01, max_iter=40)
    ref = sp.mri.app.SenseRecon((ksp * mask).numpy(), mps.numpy(), lamda=0.01,
                                weights=mask.float().expand(64, 64).numpy(), max_iter=40,
                                show_pbar=False).run()
    ref = torch.from_numpy(np.asarray(ref))
    assert float((r.image - ref).abs().max() / ref.abs().max()) < 1e-3


def test_zero_filled_is_rss_or_sense_combination(data):
    ksp, mps, mask, _ = data
    zf = reconstruct(ksp, mask, "zero-filled").image
    torch.testing.assert_close(zf, rss(ifft2c(ksp * mask)))
    zs = reconstruct(ksp, mask, "zero-filled", smaps=mps).image
    torch.testing.assert_close(zs, (mps.conj() * ifft2c(ksp * mask)).sum(0))


def test_batched_slices_and_single_coil(data):
    ksp, mps, mask, _ = data
    batch = torch.stack([ksp, 2 * ksp])
    r = reconstruct(batch, mask, "cg-sense", smaps=torch.stack([mps, mps]))
    assert r.image.shape == (2, 64, 64)
    torch.testing.assert_close(r.image[1], 2 * r.image[0], rtol=1e-4, atol=1e-4)
    single = ksp[:1]  # one coil, C = 1
    assert reconstruct(single, mask, "zero-filled").image.shape == (64, 64)


def test_acs_width():
    m = make_mask("equispaced_fraction", (32, 64), 2, 0.25, seed=0)
    assert acs_width(m) == 16
    m2 = torch.zeros(40, 40, dtype=torch.bool)
    m2[14:26, 14:26] = True
    assert acs_width(m2) == 12
    assert acs_width(torch.zeros(1, 10, dtype=torch.bool)) == 0


def test_options_round_trip_and_errors(data):
    ksp, mps, mask, _ = data
    spec = get_method("cg-sense")
    opts = resolve_options(spec, {"max_iter": "7", "lam": "0.5"})  # CLI strings are coerced
    assert (opts.max_iter, opts.lam) == (7, 0.5)
    assert resolve_options(spec, json.loads(json.dumps(spec.defaults()))) == spec.options()
    with pytest.raises(ValueError, match="valid options: lam, max_iter, tol"):
        resolve_options(spec, {"iters": 3})
    with pytest.raises(ValueError, match="unknown method 'nope'; valid methods: .*cg-sense"):
        reconstruct(ksp, mask, "nope")
    with pytest.raises(ValueError, match="expected int"):
        resolve_options(spec, {"max_iter": "many"})


def test_bad_inputs(data):
    ksp, mps, mask, _ = data
    with pytest.raises(ValueError, match="complex torch tensor"):
        reconstruct(ksp.abs(), mask)
    bad = ksp.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruct(bad, mask)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 60\)"):
        reconstruct(ksp, mask[..., :60])
    with pytest.raises(ValueError, match="smaps shape"):
        reconstruct(ksp, mask, "cg-sense", smaps=mps[:4])
    few = make_mask("equispaced_fraction", (64, 64), 4, 0.04, seed=0)
    with pytest.raises(ValueError, match="needs coil sensitivities"):
        reconstruct(ksp, few, "cg-sense")
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        reconstruct(ksp, mask, "cg-sense", smaps=mps, max_iter=0)
