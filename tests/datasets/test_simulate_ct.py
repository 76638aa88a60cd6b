"""The CT simulator: HU images, reference sinograms, low-dose noise statistics, HDF5 layout."""
import h5py
import numpy as np
import pytest
import torch
from skimage.transform import radon

from medrecon.datasets.simulate_ct import (BONE_HU, HU, circle_mask, ct_file_name, hu_to_mu,
                                           lowdose_sinogram, read_ct, simulate_ct_dataset,
                                           simulate_ct_volume)
from medrecon.datasets.simulate_mri import volume_seed


@pytest.fixture(scope="module")
def vol():
    return simulate_ct_volume(n_slices=2, size=48, n_angles=24, i0=1e5, sigma_e=5.0, seed=4)


def test_image_in_plausible_hu(vol):
    hu = vol["image_hu"]
    assert hu.shape == (2, 48, 48) and hu.dtype == np.float32
    assert hu.min() == pytest.approx(HU["air"]) and BONE_HU[0] <= hu.max() <= BONE_HU[1]  # bone is the brightest
    assert np.all(hu[:, ~circle_mask(48)] == HU["air"])
    brain = hu[(hu > 0) & (hu < 60)]
    assert brain.size > 0.2 * hu[0].size and 15 < np.median(brain) < 45


def test_noise_free_sinogram_is_skimage_radon_of_mu(vol):
    a = vol["attrs"]
    mu = hu_to_mu(vol["image_hu"], a["mu_water"])
    for s in range(2):
        ref = radon(mu[s], theta=vol["angles_deg"], circle=True, preserve_range=True).T
        np.testing.assert_allclose(vol["sinogram"][s], ref * a["pixel_size_mm"], rtol=1e-5,
                                   atol=1e-5)
    assert vol["sinogram"].shape == (2, 24, 48)
    assert np.allclose(mu[vol["image_hu"] == HU["air"]], 0)
    np.testing.assert_allclose(hu_to_mu(0.0, 0.02), 0.02)


def test_lowdose_variance_matches_delta_method():
    p = np.tile(np.linspace(0.5, 4.0, 8), (4000, 1))
    rng = np.random.default_rng(0)
    i0 = 1e6
    z = (lowdose_sinogram(p, i0, 0.0, rng) - p) * np.sqrt(i0 * np.exp(-p))
    np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=0.08)
    assert abs(z.mean()) < 0.02
    # electronic noise adds sigma_e^2 to the count variance
    i0, se = 1e4, 20.0
    d = lowdose_sinogram(np.full((20000, 1), 2.0), i0, se, rng) - 2.0
    n = i0 * np.exp(-2.0)
    assert d.var() == pytest.approx((n + se ** 2) / n ** 2, rel=0.08)


def test_lowdose_clips_counts_and_validates():
    rng = np.random.default_rng(1)
    low = lowdose_sinogram(np.full((100,), 30.0), 1e3, 5.0, rng, eps=1.0)
    assert np.isfinite(low).all() and low.max() <= np.log(1e3) + 1e-9
    with pytest.raises(ValueError):
        lowdose_sinogram(np.zeros(3), 0.0, 1.0, rng)


def test_dataset_layout_roundtrip_determinism_and_overwrite(tmp_path):
    paths = simulate_ct_dataset(tmp_path, 2, 1, 32, 12, 1e5, 5.0, seed=3, progress=False)
    assert [p.name for p in paths] == [ct_file_name(3, 0), ct_file_name(3, 1)]
    d = read_ct(paths[1])
    assert d["image_hu"].shape == (1, 32, 32) and d["sinogram_lowdose"].shape == (1, 12, 32)
    a = d["attrs"]
    assert a["format"] == "medrecon-ct-sim" and a["I0"] == 1e5 and a["sigma_e"] == 5.0
    assert len(a["angles_deg"]) == 12 and a["pixel_size_mm"] > 0 and a["mu_water"] > 0
    v = simulate_ct_volume(1, 32, 12, 1e5, 5.0, volume_seed(3, 1))
    np.testing.assert_array_equal(d["sinogram_lowdose"], v["sinogram_lowdose"])
    assert not np.allclose(read_ct(paths[0])["image_hu"], d["image_hu"])
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_ct_dataset(tmp_path, 1, 1, 32, 12, seed=3, progress=False)
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = np.zeros(3)
    with pytest.raises(ValueError, match="sinogram"):
        read_ct(bad)


def test_zoomed_volumes_are_cut_by_the_fov_circle():
    """``zoom`` > 1 (the CT recipes' truncated-FOV share): the head overfills the circular FOV, so
    tissue reaches its edge; unzoomed heads sit inside it with air around."""
    from scipy.ndimage import binary_erosion

    from medrecon.ct.data import simulate_pairs

    inside = circle_mask(48)
    rim = inside & ~binary_erosion(inside, iterations=2)
    tissue = lambda zoom: float((simulate_ct_volume(1, 48, 72, seed=3, zoom=zoom)["image_hu"][0][rim] > -500).mean())
    assert tissue(1.0) < 0.2 and tissue(1.8) > 0.8
    p = simulate_pairs(4, 32, seed=1, slices_per_volume=1, zoom_fraction=1.0)
    q = simulate_pairs(4, 32, seed=1, slices_per_volume=1, zoom_fraction=0.0)
    assert not torch.equal(p["ndct"], q["ndct"])
