"""The multi-coil MRI simulator: determinism, physics consistency, SNR, fastMRI output."""
import warnings

import numpy as np
import pytest
import torch

from medrecon.datasets import anatomy
from medrecon.datasets.augment import Augmentation, warp
from medrecon.datasets.fastmri import FastMRIFile, center_crop
from medrecon.datasets.simulate_mri import (coil_maps, mri_file_name, simulate_mri_dataset,
                                            simulate_mri_volume, volume_seed)
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c

SMALL = dict(n_slices=2, coils=4, size=(32, 32))


def test_deterministic_per_seed_and_distinct_across_seeds():
    a = simulate_mri_volume(**SMALL, snr=30, seed=5)
    b = simulate_mri_volume(**SMALL, snr=30, seed=5)
    c = simulate_mri_volume(**SMALL, snr=30, seed=6)
    np.testing.assert_array_equal(a["kspace"], b["kspace"])
    assert a["header"] == b["header"]
    assert not np.allclose(a["target"], c["target"], atol=1e-2)


def test_many_volumes_give_distinct_slices():
    imgs = [simulate_mri_volume(1, 2, (32, 32), None, seed=s)["target"][0].ravel()
            for s in range(8)]
    corr = np.corrcoef(np.stack(imgs))
    assert corr[np.triu_indices(8, 1)].max() < 0.995


def test_noise_free_target_kspace_and_maps_are_consistent():
    v = simulate_mri_volume(**SMALL, snr=None, seed=2)
    k = torch.from_numpy(v["kspace"])
    S, C, He, W = k.shape
    assert (S, C, He, W) == (2, 4, 64, 32) and v["sigma"] == 0.0
    np.testing.assert_allclose(v["target"], center_crop(rss(ifft2c(k)), (32, 32)).numpy(),
                               rtol=1e-5, atol=1e-6)
    # maps are normalised, so the RSS target is the magnitude of the object
    obj = np.abs(v["image"][:, 16:48])
    np.testing.assert_allclose(v["target"], obj, atol=1e-5)
    assert np.abs(v["image"][:, :16]).max() == 0 and np.abs(v["image"][:, 48:]).max() == 0
    np.testing.assert_allclose((np.abs(v["maps"]) ** 2).sum(0), 1.0, atol=1e-5)
    clean = fft2c(torch.from_numpy(v["image"][:, None] * v["maps"][None]))
    np.testing.assert_allclose(v["kspace"], clean.numpy(), atol=1e-5)


def test_measured_snr_matches_request():
    v = simulate_mri_volume(n_slices=2, coils=4, size=(48, 48), snr=20.0, seed=3)
    clean = fft2c(torch.from_numpy(v["image"][:, None] * v["maps"][None])).numpy()
    noise = v["kspace"] - clean
    snr = np.sqrt(np.mean(np.abs(clean) ** 2)) / np.sqrt(np.mean(np.abs(noise) ** 2))
    assert snr == pytest.approx(20.0, rel=0.03)
    assert np.var(noise.real) == pytest.approx(np.var(noise.imag), rel=0.05)
    assert v["sigma"] == pytest.approx(np.sqrt(np.mean(np.abs(noise) ** 2)), rel=0.03)


def test_coil_maps_random_rotation_normalised_and_varied():
    rng = np.random.default_rng(0)
    m1, m2 = coil_maps(8, (64, 32), (32, 32), rng), coil_maps(8, (64, 32), (32, 32), rng)
    for m in (m1, m2):
        assert m.shape == (8, 64, 32) and m.dtype == np.complex64
        np.testing.assert_allclose((np.abs(m) ** 2).sum(0), 1.0, atol=1e-5)
    assert not np.allclose(np.abs(m1), np.abs(m2), atol=1e-2)


def test_dataset_files_read_back_and_reproduce_per_volume(tmp_path):
    paths = simulate_mri_dataset(tmp_path / "d", 2, 2, 4, (32, 48), snr=(20, 40), seed=1,
                                 progress=False)
    assert [p.name for p in paths] == [mri_file_name(1, 0), mri_file_name(1, 1)]
    for i, p in enumerate(paths):
        with FastMRIFile(p) as f:
            assert f.shape == (2, 4, 64, 48) and f.recon_size == (32, 48)
            hdr = f.header
            assert hdr.recon_shape[:2] == f.target("rss").shape[1:] == (32, 48)
            assert hdr.encoded_fov_mm[0] == pytest.approx(2 * hdr.recon_fov_mm[0])
            assert hdr.recon_fov_mm[0] / 32 == pytest.approx(hdr.recon_fov_mm[1] / 48)
            assert f.attrs["acquisition"] in ("AXT1", "AXT2", "AXPD", "AXFLAIR")
            s = f.read_slice(1)
            v = simulate_mri_volume(2, 4, (32, 48), (20, 40), volume_seed(1, i))
            np.testing.assert_array_equal(s["kspace"].numpy(), v["kspace"][1])
            np.testing.assert_allclose(s["target"], v["target"][1])
    with FastMRIFile(paths[0]) as f0, FastMRIFile(paths[1]) as f1:
        assert not np.allclose(f0.target("rss")[()], f1.target("rss")[()], atol=1e-2)


def test_overwrite_refused_then_allowed(tmp_path):
    (p,) = simulate_mri_dataset(tmp_path, 1, 1, 2, (32, 32), seed=0, progress=False)
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_mri_dataset(tmp_path, 1, 1, 2, (32, 32), seed=0, progress=False)
    assert p.read_bytes() == before
    simulate_mri_dataset(tmp_path, 1, 1, 2, (32, 32), seed=0, progress=False, overwrite=True)


@pytest.mark.parametrize("kw", [dict(snr=0.0), dict(size=(8, 32)), dict(n_slices=0),
                                dict(coils=0), dict(contrast="t3")])
def test_bad_arguments_raise_value_error(kw):
    with pytest.raises(ValueError):
        simulate_mri_volume(**{**SMALL, **kw})


def test_contrasts_order_tissues_like_real_sequences():
    eye = np.eye(len(anatomy.TISSUES), dtype=np.float32)[:, :, None, None]  # [K, K, 1, 1]
    rng = np.random.default_rng(0)
    sig = {k: dict(zip(anatomy.TISSUES, anatomy.mix_contrast(eye, anatomy.contrast_params(
        k, rng)).ravel())) for k in ("t1", "t2", "pd", "flair")}
    assert sig["t1"]["wm"] > sig["t1"]["gm"] > sig["t1"]["csf"]
    assert sig["t2"]["csf"] > sig["t2"]["gm"] > sig["t2"]["wm"]
    assert sig["flair"]["csf"] < 0.1 * sig["flair"]["gm"]
    assert max(sig["t1"]["bone"], sig["t2"]["bone"]) < 0.1


def test_identity_warp_resamples_exactly():
    img = np.random.default_rng(0).random((2, 20, 20))
    np.testing.assert_allclose(warp(img, (20, 20), 20, Augmentation()), img, atol=1e-12)
    flipped = warp(img, (20, 20), 20, Augmentation(flip_lr=True))
    np.testing.assert_allclose(flipped, img[:, :, ::-1], atol=1e-12)


def test_phantom_fallback_and_missing_nilearn(monkeypatch):
    monkeypatch.setattr(anatomy, "_mni_folder", lambda: None)
    with pytest.warns(RuntimeWarning, match="medrecon\\[sim\\]"):
        a = anatomy.tissue_volume.__wrapped__("auto", 2)
    assert a.source == "shepp-logan" and a.maps.shape[0] == len(anatomy.TISSUES)
    with pytest.raises(ValueError, match="nilearn"):
        anatomy.tissue_volume.__wrapped__("mni152", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = simulate_mri_volume(**SMALL, snr=None, seed=0, source="shepp-logan")
    assert v["attrs"]["sim_source"] == "shepp-logan" and v["target"].max() > 0
