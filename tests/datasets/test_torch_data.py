"""PyTorch datasets: lazy slice index, split by volume, bad files, fastMRI-style masking
transform, DataLoader workers, image dataset normalization and training from it."""
import shutil

import h5py
import numpy as np
import pytest
import torch

from medrecon.datasets.demo import make_demo_file, make_demo_volume
from medrecon.datasets.fastmri import write_fastmri
from medrecon.datasets.torch_data import (FastMRISliceDataset, ImageDataset, MRITransform, collate,
                                          fname_seed)
from medrecon.physics.masks import make_mask

N_FILES, N_SLICES, COILS = 4, 3, 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("fastmri")
    for i in range(N_FILES):
        make_demo_file(d / f"vol{i}.h5", n_slices=N_SLICES, coils=COILS, size=(32, 32), seed=i)
    return d


def _file(folder, fname):
    with h5py.File(folder / fname, "r") as f:
        return f["kspace"][()], f["reconstruction_rss"][()], dict(f.attrs)


def test_index_is_lazy_and_items_carry_metadata(folder, monkeypatch):
    read = []
    for meth in ("__getitem__", "__array__", "read_direct"):  # every way h5py reads data
        orig = getattr(h5py.Dataset, meth)

        def spy(self, *a, _orig=orig, **k):
            read.append(self.name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(h5py.Dataset, meth, spy)
    ds = FastMRISliceDataset(folder)
    assert len(ds) == N_FILES * N_SLICES and ds.skipped == []
    assert "/kspace" not in read and "/reconstruction_rss" not in read
    item = ds[4]
    assert "/kspace" in read
    k, rss, attrs = _file(folder, "vol1.h5")
    m = item["metadata"]
    assert (m["fname"], m["slice"], m["recon_size"]) == ("vol1.h5", 1, (32, 32))
    assert (m["padding_left"], m["padding_right"]) == (0, 32)
    assert m["max"] == pytest.approx(attrs["max"]) and m["norm"] == pytest.approx(attrs["norm"])
    assert item["kspace"].dtype == torch.complex64 and item["kspace"].shape == (COILS, 64, 32)
    np.testing.assert_array_equal(item["kspace"].numpy(), k[1])
    np.testing.assert_array_equal(item["target"].numpy(), rss[1])


def test_split_by_volume_is_disjoint_deterministic_and_order_free(folder):
    tr = FastMRISliceDataset(folder, split="train", val_fraction=0.25)
    va = FastMRISliceDataset(folder, split="val", val_fraction=0.25)
    names = lambda d: {v.fname for v in d.volumes}  # noqa: E731
    assert len(names(va)) == 1 and len(names(tr)) == 3 and not names(tr) & names(va)
    assert len(tr) + len(va) == N_FILES * N_SLICES
    shuffled = sorted(folder.glob("*.h5"), reverse=True)
    assert names(FastMRISliceDataset(shuffled, split="val", val_fraction=0.25)) == names(va)
    seeds = {frozenset(names(FastMRISliceDataset(folder, split="val", split_seed=s)))
             for s in range(6)}
    assert len(seeds) > 1  # the seed changes the split
    assert len(FastMRISliceDataset(folder, sample_rate=0.5)) == 6
    vs = FastMRISliceDataset(folder, volume_sample_rate=0.5)
    assert len(vs.volumes) == 2 and len(vs) == 6
    assert vs.samples == FastMRISliceDataset(folder, volume_sample_rate=0.5).samples
    with pytest.raises(ValueError, match="not both"):
        FastMRISliceDataset(folder, sample_rate=0.5, volume_sample_rate=0.5)


def test_bad_files_are_skipped_with_a_warning(folder, tmp_path):
    for name in ("vol0.h5", "vol1.h5"):
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file")
    with h5py.File(tmp_path / "nokspace.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.warns(UserWarning) as rec:
        ds = FastMRISliceDataset(tmp_path)
    text = " ".join(str(w.message) for w in rec)
    assert "garbage.h5" in text and "nokspace.h5" in text
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["garbage.h5", "nokspace.h5"]
    assert len(ds) == 2 * N_SLICES and ds[5]["metadata"]["fname"] == "vol1.h5"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .h5"):
        FastMRISliceDataset(tmp_path / "empty")


def test_transform_masks_per_volume_like_fastmri(folder):
    t = MRITransform("random", acceleration=4, center_fraction=0.125, normalize="none")
    ds = FastMRISliceDataset(folder, transform=t)
    k, rss, _ = _file(folder, "vol2.h5")
    items = [ds[i] for i in range(6, 9)]
    ref = make_mask("random", (COILS, 64, 32), 4, 0.125, seed=fname_seed("vol2.h5"))
    for s, it in enumerate(items):
        assert it["metadata"]["fname"] == "vol2.h5" and it["metadata"]["slice"] == s
        assert it["mask"].dtype == torch.bool and torch.equal(it["mask"], ref)
        m = it["mask"].expand(COILS, 64, 32).numpy()
        ku = it["kspace"].numpy()
        assert it["kspace"].dtype == torch.complex64 and ku.shape == (COILS, 64, 32)
        assert (ku[~m] == 0).all() and np.array_equal(ku[m], k[s][m])
        np.testing.assert_array_equal(it["target"].numpy(), rss[s])
        assert it["target"].dtype == torch.float32 and it["metadata"]["scale"] == 1.0
        assert it["metadata"]["num_low_frequencies"] == 4
    assert not torch.equal(ds[0]["mask"], ref)  # another volume, another mask
    # normalized: outputs divided by the reported scale
    it = FastMRISliceDataset(folder, transform=MRITransform("random", 4, 0.125))[6]
    sc = it["metadata"]["scale"]
    assert sc > 0 and sc != 1.0
    np.testing.assert_allclose(it["target"].numpy() * sc, rss[0], rtol=1e-5)
    np.testing.assert_allclose(it["kspace"][it["mask"].expand(COILS, 64, 32)].numpy() * sc,
                               k[0][ref.expand(COILS, 64, 32).numpy()], rtol=1e-5, atol=1e-7)


def test_transform_file_mask_and_recon_size_crop(folder, tmp_path):
    v = make_demo_volume(n_slices=1, coils=2, size=(16, 16), seed=5)
    cols = np.zeros(16, bool)
    cols[[1, 6, 7, 8, 9, 13]] = True
    write_fastmri(tmp_path / "test.h5", v["kspace"] * cols, header=v["header"], mask=cols,
                  reconstruction_rss=v["target"], attrs={"num_low_frequency": 4})
    it = FastMRISliceDataset(tmp_path, transform=MRITransform(None, normalize="none"))[0]
    assert torch.equal(it["mask"][0], torch.from_numpy(cols))
    assert it["metadata"]["num_low_frequencies"] == 4
    c = FastMRISliceDataset(folder, transform=MRITransform("equispaced", 4, 0.25,
                                                             crop_kspace=True))[0]
    assert c["kspace"].shape == (COILS, 32, 32) and c["mask"].shape == (1, 32)
    full = FastMRISliceDataset(folder, transform=MRITransform("equispaced", 4, 0.25))[0]
    b = collate([c, full])  # different sizes: kept as a list
    assert isinstance(b["kspace"], list) and b["target"].shape == (2, 32, 32)


def test_dataloader_with_workers_and_maps(folder):
    t = MRITransform("equispaced", 4, 0.25)
    ds = FastMRISliceDataset(folder, transform=t, volume_sample_rate=0.5)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2))
    assert len(batches) == 2
    b = batches[0]
    assert b["kspace"].shape == (3, COILS, 64, 32) and b["kspace"].dtype == torch.complex64
    assert b["mask"].shape == (3, 1, 32) and b["target"].shape == (3, 32, 32)
    assert len(set(b["metadata"]["fname"])) == 1  # one volume per batch of 3 slices
    assert torch.equal(b["metadata"]["slice"], torch.arange(3))
    assert torch.equal(b["kspace"][1], ds[1]["kspace"])
    # ESPIRiT maps from the ACS: unit norm over coils wherever they are not cropped
    maps = FastMRISliceDataset(folder, transform=MRITransform("equispaced", 4, 0.25,
                                                              estimate_maps=True))[0]["maps"]
    assert maps.shape == (COILS, 64, 32)
    nrm = maps.abs().pow(2).sum(0).sqrt()
    assert ((nrm - 1).abs() < 1e-4)[nrm > 0.5].all() and (nrm > 0.5).float().mean() > 0.1


def test_image_dataset_magnitude_and_complex_normalization(folder):
    mag = ImageDataset(folder, mode="magnitude")
    _, rss, _ = _file(folder, "vol0.h5")
    g = mag.get(1)
    x = g["image"]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and torch.equal(mag[1], x)
    assert np.percentile(x.abs().numpy(), 99) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(x[0].numpy() * g["scale"], rss[1], rtol=1e-5)
    vol = ImageDataset(folder, mode="magnitude", normalize="volume")
    stack = torch.stack([vol[i] for i in range(N_SLICES)])
    assert np.percentile(stack.numpy(), 99) == pytest.approx(1.0, rel=1e-5)
    assert len({vol.get(i)["scale"] for i in range(N_SLICES)}) == 1

    cpx = ImageDataset(folder, size=(16, 16), split="train")
    y = cpx[0]
    assert y.shape == (2, 16, 16) and y.dtype == torch.float32 and len(cpx) == 9
    m = y.pow(2).sum(0).sqrt()
    assert np.percentile(m.numpy(), 99) == pytest.approx(1.0, rel=1e-5)
    assert y[1].abs().max() > 0.05  # a real phase: the imaginary channel carries signal
    # ESPIRiT/SENSE combination: its magnitude is the RSS image (up to noise and map crop)
    c0 = ImageDataset(folder, normalize="none")[0]
    rel = (c0.pow(2).sum(0).sqrt() - torch.from_numpy(rss[0])).norm() / np.linalg.norm(rss[0])
    assert rel < 0.05


def test_image_dataset_from_tensors_and_flips(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(5, 8, 8, dtype=torch.complex64, generator=g)
    np.save(tmp_path / "x.npy", imgs.numpy())
    ds = ImageDataset(tmp_path / "x.npy")
    item = ds.get(2)
    back = torch.view_as_complex(item["image"].permute(1, 2, 0).contiguous()) * item["scale"]
    np.testing.assert_allclose(back.numpy(), imgs[2].numpy(), rtol=1e-5, atol=1e-6)
    torch.save(torch.view_as_real(imgs).permute(0, 3, 1, 2).contiguous(), tmp_path / "x.pt")
    np.testing.assert_allclose(ImageDataset(tmp_path / "x.pt")[2].numpy(), item["image"].numpy())
    assert ImageDataset(imgs.abs()[:, None], mode="magnitude")[0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="magnitude"):
        ImageDataset(imgs.abs()[:, None])
    a = ImageDataset(imgs, flip=True, seed=3)
    b = ImageDataset(imgs, flip=True, seed=3)
    seq_a = [a[0] for _ in range(8)]
    assert all(torch.equal(u, v) for u, v in zip(seq_a, [b[0] for _ in range(8)]))
    assert len({tuple(u.flatten().tolist()) for u in seq_a}) > 1  # flips happen


def test_train_runs_on_image_dataset(folder, tmp_path):
    from medrecon.models.train import train

    ds = ImageDataset(folder, size=(16, 16), cache=True)
    res = train("tiny", ds, tmp_path / "run", steps=2, batch_size=2, progress=False, ema_decay=None)
    assert len(res.losses) == 2 and all(np.isfinite(res.losses))
