"""fastMRI HDF5: lossless round trips, fastMRI's own reader on our files, lazy slices, errors."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medrecon.datasets.fastmri import (FastMRIFile, center_crop, make_ismrmrd_header,
                                       parse_ismrmrd_header, write_fastmri, write_reconstruction)


def _k(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@settings(max_examples=15, deadline=None)
@given(s=st.integers(1, 3), c=st.integers(0, 3), h=st.integers(4, 12), w=st.integers(4, 12),
       with_mask=st.booleans(), with_target=st.booleans())
def test_round_trip_lossless(tmp_path_factory, s, c, h, w, with_mask, with_target):
    shape = (s, c, h, w) if c else (s, h, w)
    k = _k(shape, seed=s * 7 + h)
    mask = (np.arange(w) % 2 == 0) if with_mask else None
    tgt = np.abs(k).reshape(s, -1, h, w).sum(1).astype(np.float32) if with_target else None
    kw = {"reconstruction_rss": tgt} if c else {"reconstruction_esc": tgt}
    path = tmp_path_factory.mktemp("rt") / "f.h5"
    write_fastmri(path, k, mask=mask, attrs={"patient_id": "p1"}, **kw)
    with FastMRIFile(path) as f:
        assert f.is_multicoil == bool(c) and f.num_slices == s
        np.testing.assert_array_equal(f.kspace[()], k)
        for i in range(s):
            np.testing.assert_array_equal(f.read_slice(i)["kspace"].numpy(), k[i])
        assert (f.mask is None) == (mask is None)
        if mask is not None:
            np.testing.assert_array_equal(f.mask, mask)
        if tgt is not None:
            np.testing.assert_array_equal(f.target("rss" if c else "esc")[()], tgt)
            assert f.attrs["max"] == pytest.approx(float(tgt.max()))
        assert f.attrs["patient_id"] == "p1"
        hdr = f.header
        # write -> read -> write again gives the same file content
        path2 = path.parent / "g.h5"
        write_fastmri(path2, f.kspace[()], header=f._h5["ismrmrd_header"][()].decode(),
                      mask=f.mask, attrs=dict(f._h5.attrs), **kw)
    with FastMRIFile(path2) as g:
        np.testing.assert_array_equal(g.kspace[()], k)
        assert g.header == hdr


def test_fastmri_reads_our_files(tmp_path):
    mri_data = pytest.importorskip("fastmri.data.mri_data")
    k = _k((2, 3, 16, 12))
    hdr = make_ismrmrd_header((16, 12, 1), (8, 8, 1), (300.0, 220.0, 4.0),
                              enc_limits_center=5, enc_limits_max=10)
    write_fastmri(tmp_path / "a.h5", k, header=hdr, reconstruction_rss=np.ones((2, 8, 8)))
    ds = mri_data.SliceDataset(tmp_path, challenge="multicoil", use_dataset_cache=False)
    assert len(ds) == 2
    meta = ds.raw_samples[0].metadata
    ours = FastMRIFile(tmp_path / "a.h5")
    assert meta["encoding_size"] == ours.header.encoded_shape
    assert meta["recon_size"] == ours.header.recon_shape
    assert (meta["padding_left"], meta["padding_right"]) == \
        (ours.attrs["padding_left"], ours.attrs["padding_right"])
    kspace, mask, target, attrs, fname, i = ds[1]
    np.testing.assert_array_equal(kspace, k[1])
    ours.close()


def test_header_parse_and_fields():
    hdr = parse_ismrmrd_header(make_ismrmrd_header((640, 368, 1), (320, 320, 1),
                                                   (440.0, 220.0, 3.0)))
    assert hdr.encoded_shape == (640, 368, 1) and hdr.recon_size == (320, 320)
    assert hdr.encoded_fov_mm == (440.0, 220.0, 3.0)
    with pytest.raises(ValueError, match="not valid XML"):
        parse_ismrmrd_header("<oops")
    with pytest.raises(ValueError, match="lacks encoding"):
        parse_ismrmrd_header('<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"/>')


def test_slice_access_is_lazy(tmp_path, monkeypatch):
    write_fastmri(tmp_path / "big.h5", _k((6, 2, 32, 16)))
    reads = []
    orig = h5py.Dataset.__getitem__

    def spy(self, idx):
        reads.append((self.name, idx))
        return orig(self, idx)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with FastMRIFile(tmp_path / "big.h5") as f:
        f.read_slice(4)
    kreads = [idx for name, idx in reads if name == "/kspace"]
    assert kreads == [4]  # one slice read, never the volume


def test_center_crop_matches_fastmri():
    transforms = pytest.importorskip("fastmri.data.transforms")
    x = torch.randn(2, 11, 9)
    for shape in [(5, 4), (11, 9), (6, 3)]:
        torch.testing.assert_close(center_crop(x, shape), transforms.center_crop(x, shape))
    with pytest.raises(ValueError, match="must fit"):
        center_crop(x, (12, 4))


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(ValueError, match="notes.h5: not a readable HDF5"):
        FastMRIFile(bad)
    good = tmp_path / "good.h5"
    write_fastmri(good, _k((2, 2, 8, 8)))
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(ValueError, match="trunc.h5"):
        FastMRIFile(trunc)
    nokey = tmp_path / "nokey.h5"
    with h5py.File(nokey, "w") as f:
        f["image"] = np.zeros(3)
    with pytest.raises(ValueError, match="missing 'kspace' dataset \\(keys: image\\)"):
        FastMRIFile(nokey)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["kspace"] = _k((2, 8, 8))
        f["ismrmrd_header"] = make_ismrmrd_header((10, 8, 1), (4, 4, 1))
    with pytest.raises(ValueError, match="does not match the k-space size"):
        FastMRIFile(wrong)
    with pytest.raises(FileNotFoundError):
        FastMRIFile(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="slice 5 out of range"):
        FastMRIFile(good).read_slice(5)


def test_writers_never_overwrite_and_leave_no_temp(tmp_path):
    p = tmp_path / "x.h5"
    write_fastmri(p, _k((1, 2, 8, 8)))
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_fastmri(p, _k((1, 2, 8, 8), seed=1))
    assert p.read_bytes() == before
    with pytest.raises(ValueError, match="NaN"):
        write_fastmri(tmp_path / "nan.h5", np.full((1, 2, 4, 4), np.nan, np.complex64))
    write_fastmri(p, _k((1, 2, 8, 8), seed=1), overwrite=True)
    r = tmp_path / "r.h5"
    write_reconstruction(r, np.ones((2, 4, 4)))
    with h5py.File(r) as f:
        assert f["reconstruction"].dtype == np.float32 and f["reconstruction"].shape == (2, 4, 4)
    with pytest.raises(FileExistsError):
        write_reconstruction(r, np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\[slices, rx, ry\]"):
        write_reconstruction(tmp_path / "bad.h5", np.ones((4, 4)))
    assert sorted(os.listdir(tmp_path)) == ["r.h5", "x.h5"]  # no temporary files left


def test_outputs_get_umask_permissions(tmp_path):
    """Temp files are 0600 while written; finished outputs are readable like any other file."""
    import os
    import stat

    from medrecon.datasets.dicom import write_dicom_series
    from medrecon.datasets.nifti import write_nifti

    old = os.umask(0o022)
    try:
        h5 = write_fastmri(tmp_path / "k.h5", np.zeros((1, 2, 8, 8), np.complex64))
        nii = write_nifti(np.zeros((2, 4, 4), np.float32), tmp_path / "v.nii.gz", np.eye(4))
        dcm = write_dicom_series(np.ones((2, 4, 4), np.float32), tmp_path / "dcm",
                                 affine=np.eye(4), modality="MR")
    finally:
        os.umask(old)
    for p in (h5, nii, *Path(dcm).iterdir()):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p
    assert stat.S_IMODE(os.stat(dcm).st_mode) == 0o755
