"""NIfTI I/O and the DICOM (LPS) <-> NIfTI (RAS) geometry, checked on real DICOM files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.geometry import lps_to_ras, voxel_to_world
from medrecon.datasets.nifti import (dicom_to_nifti_affine, nifti_affine_to_dicom, read_nifti,
                                     sidecar_path, write_nifti)

with warnings.catch_warnings():  # nibabel warns that its DICOM readers are experimental
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

CT5N = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"


def _random_affine(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    a = np.eye(4)
    a[:3, :3] = q * rng.uniform(0.3, 4.0, 3)
    a[:3, 3] = rng.uniform(-200, 200, 3)
    return a


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_round_trip_and_sidecar(tmp_path, name):
    vol = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float32)
    aff = _random_affine(2)
    meta = {"method": "ddim", "steps": 50, "acceleration": 4}
    p = write_nifti(vol, tmp_path / name, aff, sidecar=meta)
    r = read_nifti(p)
    np.testing.assert_array_equal(r.volume, vol)
    np.testing.assert_allclose(r.affine, aff, atol=1e-5)
    assert r.header["disk_shape"] == (7, 5, 3) and r.header["sform_code"] == 1
    assert r.header["sidecar"] == meta == json.loads(sidecar_path(p).read_text())
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([name, "vol.json"])
    raw = nib.load(p)  # on disk: (x=col, y=row, z=slice), affine for that order
    assert raw.get_fdata()[6, 4, 2] == pytest.approx(vol[2, 4, 6])
    np.testing.assert_allclose(raw.affine @ [6, 4, 2, 1], [*voxel_to_world(aff, (2, 4, 6)), 1],
                               atol=1e-4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(*(st.integers(1, 6),) * 3), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.int16, np.uint8]), gz=st.booleans())
def test_round_trip_property(tmp_path, shape, seed, dtype, gz):
    """Any small volume and affine survive write -> read exactly (values, dtype-exact affine)."""
    rng = np.random.default_rng(seed)
    vol = (rng.standard_normal(shape) * 50).astype(dtype)
    aff = _random_affine(seed)
    p = tmp_path / f"p{seed}_{gz}.nii{'.gz' if gz else ''}"
    r = read_nifti(write_nifti(vol, p, aff, overwrite=True, dtype=dtype))
    np.testing.assert_array_equal(r.volume, vol.astype(np.float32))
    np.testing.assert_allclose(r.affine, aff, atol=1e-4)


def test_4d_and_2d_volumes(tmp_path):
    vol4 = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    r = read_nifti(write_nifti(vol4, tmp_path / "t.nii", np.eye(4)))
    np.testing.assert_array_equal(r.volume, vol4)
    r2 = read_nifti(write_nifti(vol4[0, 0], tmp_path / "s.nii", np.eye(4)))
    assert r2.volume.shape == (1, 4, 5)


def test_overwrite_refusal_keeps_file(tmp_path):
    p = tmp_path / "a.nii.gz"
    write_nifti(np.zeros((2, 3, 4)), p, np.eye(4))
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_nifti(np.ones((2, 3, 4)), p, np.eye(4))
    assert p.read_bytes() == before
    sidecar_path(p).write_text("{}")
    with pytest.raises(FileExistsError, match="a.json"):
        write_nifti(np.ones((2, 3, 4)), tmp_path / "a.nii", np.eye(4), sidecar={"x": 1})
    assert not (tmp_path / "a.nii").exists()
    write_nifti(np.ones((2, 3, 4)), p, np.eye(4), overwrite=True, sidecar={"x": 1})
    assert read_nifti(p).volume.min() == 1 and read_nifti(p).header["sidecar"] == {"x": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json", "a.nii.gz"]  # no temp files


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "x.img", np.eye(4))
    with pytest.raises(ValueError, match="complex"):
        write_nifti(np.zeros((2, 2, 2), complex), tmp_path / "x.nii", np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "x.nii", np.zeros((4, 4)))
    bad = tmp_path / "bad.nii"
    bad.write_text("not nifti")
    with pytest.raises(ValueError, match="bad.nii"):
        read_nifti(bad)


def test_dicom_to_nifti_overlays_source_hand_checked(tmp_path):
    """World position of corner voxels: DICOM formula (LPS, flipped to RAS) == NIfTI affine."""
    s = read_dicom_series(CT5N)
    p = write_nifti(s.volume, tmp_path / "ct.nii.gz", s.ras_affine)
    img = nib.load(p)
    data = img.get_fdata()
    row_cos, col_cos = s.orientation[:3], s.orientation[3:]
    dr, dc = s.pixel_spacing
    S, R, C = s.volume.shape
    for k, r, c in [(0, 0, 0), (S - 1, R - 1, C - 1), (S - 1, 0, C - 1), (2, 7, 3)]:
        lps = s.slice_positions[k] + r * dr * col_cos + c * dc * row_cos
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose((img.affine @ [c, r, k, 1])[:3], ras, atol=1e-4)
        assert data[c, r, k] == s.volume[k, r, c]
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # axial DICOM: x=col, y=row, z up
    np.testing.assert_allclose(
        dicom_to_nifti_affine(s.orientation, s.pixel_spacing, s.slice_positions[0],
                              s.slice_spacing), s.ras_affine, atol=1e-6)


def test_in_plane_affine_agrees_with_nibabel_nicom():
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
            nib_aff = w.affine  # LPS, indices (row, col, slice)
        s = read_dicom_series(path)
        for r, c in [(0, 0), (5, 17), (63, 63)]:
            np.testing.assert_allclose(voxel_to_world(s.affine, (0, r, c)),
                                       (nib_aff @ [r, c, 0, 1])[:3], atol=1e-4)


def test_multiframe_affine_agrees_with_nibabel_nicom():
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (real enhanced CT file)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = dicomwrappers.MultiframeWrapper(pydicom.dcmread(path))
        nib_aff, nib_data = w.affine, w.get_data()  # (row, col, slice), LPS
    s = read_dicom_series(path)
    S = s.volume.shape[0]
    for k, r, c in [(0, 0, 0), (1, 511, 0), (0, 100, 300)]:
        # nibabel orders this stack the other way along the normal
        nk = S - 1 - k if np.dot(nib_aff[:3, 2], s.affine[:3, 0]) < 0 else k
        np.testing.assert_allclose(voxel_to_world(s.affine, (k, r, c)),
                                   (nib_aff @ [r, c, nk, 1])[:3], atol=1e-4)
        assert s.volume[k, r, c] == nib_data[r, c, nk]


@pytest.mark.parametrize("seed", range(5))
def test_affine_conversions_are_inverse(seed):
    aff = _random_affine(seed)
    g = nifti_affine_to_dicom(aff, 4)
    back = dicom_to_nifti_affine(g["orientation"], g["pixel_spacing"], g["positions"][0],
                                 g["positions"][1] - g["positions"][0])
    np.testing.assert_allclose(back, aff, atol=1e-9)
    np.testing.assert_allclose(lps_to_ras(lps_to_ras(aff)), aff)


def test_nifti_to_dicom_to_nifti(tmp_path):
    """A NIfTI volume written as DICOM (geometry from its affine) reads back on the same grid."""
    aff = dicom_to_nifti_affine([0, 1, 0, 0, 0, -1], (0.8, 0.9), (10, -20, 30), 2.0)
    vol = np.random.default_rng(3).uniform(0, 1, (3, 6, 5)).astype(np.float32)
    src = read_nifti(write_nifti(vol, tmp_path / "in.nii", aff))
    g = nifti_affine_to_dicom(src.affine, src.volume.shape[0])
    np.testing.assert_allclose(g["orientation"], [0, 1, 0, 0, 0, -1], atol=1e-12)
    out = write_dicom_series(src.volume, tmp_path / "dcm", affine=lps_to_ras(src.affine))
    back = read_dicom_series(out)
    np.testing.assert_allclose(back.ras_affine, aff, atol=1e-4)
    assert np.abs(back.volume - vol).max() <= 1 / 65535 * 1.01


def _dcm2niix() -> str:
    """dcm2niix (pip package `dcm2niix`) as an independent DICOM->NIfTI reference."""
    exe = shutil.which("dcm2niix") or shutil.which("dcm2niix",
                                                    path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("needs dcm2niix (pip install dcm2niix)")
    return exe


def _same_voxels_in_world(volume, ras_affine, nii_path, atol):
    """Every voxel of ``volume`` lands, through the world, on an equal voxel of the file."""
    img = nib.load(nii_path)
    data = np.squeeze(img.get_fdata())
    idx = np.indices(volume.shape).reshape(3, -1).T
    inv = np.linalg.inv(img.affine)
    ijk = voxel_to_world(ras_affine, idx) @ inv[:3, :3].T + inv[:3, 3]
    assert np.abs(ijk - np.rint(ijk)).max() < 1e-3  # same grid
    ijk = np.rint(ijk).astype(int)
    np.testing.assert_allclose(data[tuple(ijk.T)], volume.reshape(-1), atol=atol)


def test_dcm2niix_agrees_on_real_and_written_series(tmp_path):
    exe = _dcm2niix()
    s = read_dicom_series(CT5N)
    aff = dicom_to_nifti_affine([0.6, 0.8, 0, 0, 0, -1], (0.7, 1.3), (12, -40, 55), 2.5)
    vol = np.random.default_rng(4).uniform(-50, 900, (4, 9, 11)).astype(np.float32)
    out = write_dicom_series(vol, tmp_path / "dcm", affine=lps_to_ras(aff), modality="CT")
    slope = float(pydicom.dcmread(next(out.iterdir())).RescaleSlope)
    for name, src, want, ras, atol in (("real", CT5N, s.volume, s.ras_affine, 0),
                                       ("ours", out, vol, aff, slope)):
        subprocess.run([exe, "-z", "n", "-b", "n", "-o", str(tmp_path), "-f", name, str(src)],
                       check=True, capture_output=True)
        _same_voxels_in_world(want, ras, tmp_path / f"{name}.nii", atol)
