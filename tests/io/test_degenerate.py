"""Degenerate inputs are errors naming the input, and records never hold NaN/Infinity."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medrecon.datasets.dicom import read_dicom_series
from medrecon.datasets.fastmri import FastMRIFile, write_fastmri
from medrecon.datasets.nifti import write_nifti
from medrecon.image_inputs import read_image_volume
from medrecon.metrics import evaluate, summary
from medrecon.reconstruct import reconstruct

CT5N = get_testdata_file("CT_small.dcm")
SERIES = __import__("pathlib").Path(CT5N).parent / "dicomdirtests" / "98892001" / "CT5N"


def _k(shape=(1, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.complex64)


@pytest.mark.parametrize("method", ["zero-filled", "cg-sense"])
def test_all_zero_kspace_and_empty_mask(method):
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, 4:12] = True
    smaps = torch.ones(1, 16, 16, dtype=torch.complex64)
    with pytest.raises(ValueError, match="all zero on the sampled"):
        reconstruct(torch.zeros(1, 16, 16, dtype=torch.complex64), mask, method, smaps=smaps)
    k = _k()
    k[..., 4:12] = 0  # non-zero only where nothing is sampled
    with pytest.raises(ValueError, match="all zero on the sampled"):
        reconstruct(k, mask, method, smaps=smaps)
    with pytest.raises(ValueError, match="mask samples no k-space"):
        reconstruct(_k(), torch.zeros(1, 16, dtype=torch.bool), method, smaps=smaps)
    batch = torch.stack([torch.zeros(1, 16, 16, dtype=torch.complex64), _k()])
    assert torch.isfinite(reconstruct(batch, mask, method, smaps=smaps).magnitude).all()


def test_fastmri_all_zero_mask(tmp_path):
    p = write_fastmri(tmp_path / "m.h5", _k((1, 2, 8, 8)).numpy(), mask=np.zeros(8, bool))
    with pytest.raises(ValueError, match="mask selects no k-space line") as err:
        FastMRIFile(p)
    assert str(p) in str(err.value)


def test_all_zero_image_volume(tmp_path):
    p = write_nifti(np.zeros((2, 16, 16), np.float32), tmp_path / "z.nii", np.eye(4))
    with pytest.raises(ValueError, match="all zero") as err:
        read_image_volume(p)
    assert str(p) in str(err.value)


def _series(tmp_path, edit):
    d = tmp_path / "s"
    d.mkdir()
    for i, f in enumerate(sorted(SERIES.iterdir())):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        edit(ds, i)
        ds.save_as(d / f"{i}.dcm")
    return d


def test_dicom_pixelless_slice_is_an_error(tmp_path):
    d = _series(tmp_path, lambda ds, i: ds.__delattr__("PixelData") if i == 2 else None)
    with pytest.raises(ValueError, match="without pixel data") as err:
        read_dicom_series(d)
    assert str(d / "2.dcm") in str(err.value)


def test_dicom_truncated_slice_is_an_error(tmp_path):
    d = _series(tmp_path, lambda ds, i: None)
    raw = (d / "3.dcm").read_bytes()
    (d / "3.dcm").write_bytes(raw[:300])  # DICM preamble, then cut
    with pytest.raises(ValueError) as err:
        read_dicom_series(d)
    assert str(d / "3.dcm") in str(err.value)


def test_dicom_irregular_spacing(tmp_path):
    def gap(ds, i):  # z = 0, 2.5, 5, 7.5, 12.5: a missing slice
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i + (2.5 if i == 4 else 0.0)]
    d = _series(tmp_path, gap)
    with pytest.raises(ValueError, match="non-uniform slice spacing") as err:
        read_image_volume(d)
    assert str(d) in str(err.value) and "allow_irregular_spacing" in str(err.value)
    with pytest.warns(UserWarning, match="non-uniform"):
        iv = read_image_volume(d, allow_irregular_spacing=True)
    assert iv.volume.shape[0] == 5
    shutil.rmtree(d)
    even = _series(tmp_path, lambda ds, i: setattr(ds, "ImagePositionPatient", [0.0, 0.0, 2.5 * i]))
    assert read_dicom_series(even).slice_spacing == pytest.approx(2.5)


def test_metrics_null_with_reason_never_nan():
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 16)).astype(np.float32) + 0.1
    cases = {"reference is all zero": (np.zeros_like(x), x),
             "PSNR is infinite": (x, x.copy()),
             "smaller than the 7x7": (x[:, :5, :5], x[:, :5, :5] * 0.9),
             "<= 0": (-x, x)}
    for why, (g, p) in cases.items():
        m = evaluate(g, p)
        json.dumps(m, allow_nan=False)  # strict JSON
        assert why in m["reason"] and None in (m["nmse"], m["psnr"], m["ssim"])
        assert "n/a" in summary(m)
    good = evaluate(x, x * 0.9)
    assert "reason" not in good and all(np.isfinite(v) for v in good.values())


def test_sinogram_all_zero(tmp_path):
    from medrecon.ct.inputs import read_ct_input

    p = tmp_path / "z.npy"
    np.save(p, np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match="all zero") as err:
        read_ct_input(p, {})
    assert str(p) in str(err.value)
    shutil.rmtree(tmp_path)


def test_blank_edge_slices_run_an_all_zero_volume_fails(tmp_path):
    """Blank slices inside a volume (the empty edge slices of many NIfTI volumes) reconstruct to
    zero; a volume whose every selected slice is blank is an error naming the file (exit 1)."""
    from medrecon.cli.main import main
    from medrecon.pipeline import MaskSpec, reconstruct_file

    vol = np.zeros((3, 16, 16), np.float32)
    vol[1, 4:12, 4:12] = 1.0
    p = write_nifti(vol, tmp_path / "edges.nii", np.eye(4))
    rec = reconstruct_file(p, "zero-filled", MaskSpec(acceleration=2, center_fraction=0.25),
                           out=tmp_path / "out.nii.gz")
    assert rec["slices"] == [0, 3] and rec["metrics"]["psnr"] is not None
    k = np.zeros((2, 2, 16, 16), np.complex64)
    z = write_fastmri(tmp_path / "zero.h5", k)
    assert main(["recon", str(z), "--method", "zero-filled", "--acceleration", "2",
                 "--center-fraction", "0.25"]) == 1
    with pytest.raises(ValueError, match="all zero in every selected slice"):
        reconstruct_file(z, "zero-filled", MaskSpec(acceleration=2, center_fraction=0.25))
