import numpy as np
import pytest

from medrecon.datasets.demo import make_demo_file, make_demo_volume
from medrecon.datasets.fastmri import FastMRIFile, center_crop
from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c


def test_demo_volume_is_consistent_and_deterministic():
    v = make_demo_volume(n_slices=2, coils=4, size=(32, 32), seed=3)
    k = v["kspace"]
    assert k.shape == (2, 4, 64, 32) and k.dtype == np.complex64
    import torch

    tgt = center_crop(rss(ifft2c(torch.from_numpy(k))), (32, 32)).numpy()
    np.testing.assert_allclose(v["target"], tgt, rtol=1e-5, atol=1e-6)
    # readout oversampling: nearly no signal outside the central half of the encoded FOV
    full = rss(ifft2c(torch.from_numpy(k))).numpy()
    assert full[:, :12].mean() < 0.05 * full[:, 16:48].mean()
    np.testing.assert_array_equal(make_demo_volume(2, 4, (32, 32), seed=3)["kspace"], k)
    assert not np.array_equal(make_demo_volume(2, 4, (32, 32), seed=4)["kspace"], k)
    assert not np.allclose(v["target"][0], v["target"][1])  # distinct slices
    with pytest.raises(ValueError, match="size >= 16"):
        make_demo_volume(size=(8, 8))


def test_demo_file(tmp_path):
    p = make_demo_file(tmp_path / "d.h5", n_slices=2, coils=4, size=(32, 32))
    with FastMRIFile(p) as f:
        assert f.is_multicoil and f.recon_size == (32, 32) and f.mask is None
        assert f.header.encoded_shape[:2] == (64, 32)
    with pytest.raises(FileExistsError):
        make_demo_file(p)
