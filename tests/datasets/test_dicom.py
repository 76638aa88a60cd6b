"""DICOM series I/O on the real test files shipped with pydicom (and pydicom-data if present)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings, strategies as st
from pydicom.data import get_testdata_file
try:
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from medrecon.datasets.deid import remap_uid
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.geometry import dicom_affine, voxel_to_world

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
CT5N = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"  # real 5-slice axial CT series
CT2N = TEST_FILES / "dicomdirtests" / "98892001" / "CT2N"  # another real CT series


def _copy_shuffled(src: Path, dst: Path, seed: int = 0, edit=None) -> list[Path]:
    """Copy a real series under names whose order differs from the slice order, scrambling
    InstanceNumber too; ``edit(ds, i)`` may change each dataset before saving."""
    dst.mkdir(exist_ok=True)
    files = sorted(src.iterdir())
    rng = np.random.default_rng(seed)
    out = []
    for i, j in enumerate(rng.permutation(len(files))):
        ds = pydicom.dcmread(files[i])
        ds.InstanceNumber = int(j) + 1
        if edit is not None:
            edit(ds, i)
        p = dst / f"{'zyxwvutsrq'[j]}{i}.dcm"
        ds.save_as(p)
        out.append(p)
    return out


def _z_sorted_pixels(src: Path) -> tuple[np.ndarray, np.ndarray]:
    dss = sorted((pydicom.dcmread(p) for p in src.iterdir()),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    return (np.stack([apply_modality_lut(d.pixel_array, d) for d in dss]),
            np.array([[float(x) for x in d.ImagePositionPatient] for d in dss]))


@pytest.fixture
def ct_dir(tmp_path) -> Path:
    """CT5N with identifying data filled in so anonymisation has something to strip."""
    def edit(ds, i):
        ds.PatientBirthDate, ds.AccessionNumber = "19700101", "ACC123"
    _copy_shuffled(CT5N, tmp_path / "ct", edit=edit)
    return tmp_path / "ct"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_single_file_rescale_and_geometry(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    s = read_dicom_series(path)
    assert s.volume.dtype == np.float32 and s.volume.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(s.volume[0], apply_modality_lut(ds.pixel_array, ds))
    np.testing.assert_allclose(s.slice_positions[0], [float(x) for x in ds.ImagePositionPatient])
    np.testing.assert_allclose(s.orientation, [float(x) for x in ds.ImageOrientationPatient])
    assert s.pixel_spacing == tuple(float(x) for x in ds.PixelSpacing)
    if name == "CT_small.dcm":  # the intercept really is applied
        assert float(ds.RescaleIntercept) == -1024 and s.volume.min() < 0


def test_series_sorted_by_position_not_name_or_instance_number(ct_dir):
    s = read_dicom_series(ct_dir)
    want, pos = _z_sorted_pixels(CT5N)
    np.testing.assert_array_equal(s.volume, want)
    np.testing.assert_allclose(s.slice_positions, pos)
    assert np.all(np.diff(pos[:, 2]) > 0) and s.slice_spacing == pytest.approx(2.5)
    for k in range(5):  # the affine puts voxel (k, 0, 0) at slice k's ImagePositionPatient
        np.testing.assert_allclose(voxel_to_world(s.affine, (k, 0, 0)), pos[k], atol=1e-4)
    assert [pydicom.dcmread(f).ImagePositionPatient[2] for f in s.files] == list(pos[:, 2])


def test_oblique_series_sorted_along_normal(tmp_path):
    """Sagittal-like orientation: the normal is -x, so slices sort by decreasing x."""
    iop = [0, 1, 0, 0, 0, -1]
    xs = [30.0, -10.0, 10.0, 0.0, 20.0]

    def edit(ds, i):
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [xs[i], -5.0, 40.0]
        ds.PixelData = (ds.pixel_array + 100 * i).astype(ds.pixel_array.dtype).tobytes()
    _copy_shuffled(CT5N, tmp_path / "sag", edit=edit)
    s = read_dicom_series(tmp_path / "sag")
    np.testing.assert_allclose(s.slice_positions[:, 0], sorted(xs, reverse=True))
    np.testing.assert_allclose(s.affine[:3, 0], [-10.0, 0, 0])
    np.testing.assert_allclose(s.affine[:3, 1], [0, 0, -0.488281])  # along rows: col cosine
    np.testing.assert_allclose(s.affine[:3, 2], [0, 0.488281, 0])  # along cols: row cosine


def test_mixed_series_error_and_choice(tmp_path):
    d = tmp_path / "mixed"
    shutil.copytree(CT5N, d)
    for p in CT2N.iterdir():
        shutil.copy(p, d / f"other_{p.name}")
    uids = {str(pydicom.dcmread(next(x.iterdir())).SeriesInstanceUID) for x in (CT5N, CT2N)}
    with pytest.raises(ValueError, match="series_uid=") as err:
        read_dicom_series(d)
    assert str(d) in str(err.value) and all(u in str(err.value) for u in uids)
    uid5 = str(pydicom.dcmread(next(CT5N.iterdir())).SeriesInstanceUID)
    assert read_dicom_series(d, series_uid=uid5).volume.shape == (5, 16, 16)


def test_not_dicom_and_no_image_errors(tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(ValueError, match="not a DICOM file") as err:
        read_dicom_series(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="no DICOM image files"):
        read_dicom_series(tmp_path)
    with pytest.raises(ValueError, match="no image data"):
        read_dicom_series(get_testdata_file("rtplan.dcm"))
    shutil.copytree(CT5N, tmp_path / "withtext")
    shutil.copy(bad, tmp_path / "withtext" / "README")  # stray non-DICOM files are skipped
    assert read_dicom_series(tmp_path / "withtext").volume.shape == (5, 16, 16)


def test_inconsistent_orientation_and_size_errors(tmp_path):
    def tilt(ds, i):
        if i == 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    files = _copy_shuffled(CT5N, tmp_path / "tilt", edit=tilt)
    with pytest.raises(ValueError, match="ImageOrientationPatient") as err:
        read_dicom_series(tmp_path / "tilt")
    assert str(files[2]) in str(err.value)

    def crop(ds, i):
        if i == 1:
            ds.PixelData = ds.pixel_array[:8].copy().tobytes()
            ds.Rows = 8
    _copy_shuffled(CT5N, tmp_path / "crop", edit=crop)
    with pytest.raises(ValueError, match="rows/cols"):
        read_dicom_series(tmp_path / "crop")


def _check_valid_files(out: Path, modality: str) -> list[pydicom.Dataset]:
    dss = []
    for p in sorted(out.iterdir()):
        assert p.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == modality and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.DerivationDescription and ds.pixel_array.dtype == np.uint16
        dss.append(ds)
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    return dss


def test_write_read_round_trip_with_reference(ct_dir, tmp_path):
    ref = read_dicom_series(ct_dir)
    recon = ref.volume * 0.731 + np.linspace(0, 3, ref.volume.size).reshape(ref.volume.shape)
    out = write_dicom_series(recon, tmp_path / "out", ref, window=(40, 400))
    dss = _check_valid_files(out, "CT")
    back = read_dicom_series(out)
    slope = float(dss[0].RescaleSlope)
    assert np.abs(back.volume - recon).max() <= slope
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(back.slice_positions, ref.slice_positions, atol=1e-5)
    assert back.pixel_spacing == ref.pixel_spacing and back.slice_thickness == 2.5
    assert (float(dss[0].WindowCenter), float(dss[0].WindowWidth)) == (40, 400)
    # integer-valued data (HU) are stored exactly
    out2 = write_dicom_series(ref.volume, tmp_path / "hu", ref)
    np.testing.assert_array_equal(read_dicom_series(out2).volume, ref.volume)


def _rotation(a, b, c) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


@settings(max_examples=12, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 7), st.integers(2, 7)),
       spacing=st.tuples(*[st.floats(0.2, 5.0)] * 3),
       angles=st.tuples(*[st.floats(-3.1, 3.1)] * 3),
       origin=st.tuples(*[st.floats(-300, 300)] * 3),
       scale=st.sampled_from([1e-3, 1.0, 3000.0]), seed=st.integers(0, 2**16))
def test_round_trip_property(tmp_path_factory, shape, spacing, angles, origin, scale, seed):
    rot = _rotation(*angles)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    affine = dicom_affine(iop, spacing[:2], origin, spacing[2])  # slices along +normal
    vol = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    out = write_dicom_series(vol, tmp_path_factory.mktemp("rt") / "s", affine=affine)
    back = read_dicom_series(out)
    slope = float(pydicom.dcmread(next(out.iterdir())).RescaleSlope)
    assert back.volume.shape == shape and back.modality == "MR"
    assert np.abs(back.volume - vol).max() <= slope + 1e-6 * np.abs(vol).max()
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)


def test_slices_against_normal_come_back_reversed(tmp_path):
    """DICOM has no slice order: a grid stepping against the normal reads back flipped, with
    every voxel at the same world position."""
    affine = dicom_affine([1, 0, 0, 0, 1, 0], (1.0, 2.0), (5, 6, 7), [0, 0, -3.0])
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    back = read_dicom_series(write_dicom_series(vol, tmp_path / "s", affine=affine))
    np.testing.assert_allclose(back.volume, vol[::-1], atol=1e-3)
    np.testing.assert_allclose(voxel_to_world(back.affine, (2, 3, 4)),
                               voxel_to_world(affine, (0, 3, 4)), atol=1e-5)


SOURCE_IDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")


def test_anonymize_default_strips_identifiers(ct_dir, tmp_path):
    ref = read_dicom_series(ct_dir)
    src = pydicom.dcmread(ref.files[0])
    dss = _check_valid_files(write_dicom_series(ref.volume, tmp_path / "anon", ref), "CT")
    for ds in dss:
        for kw in SOURCE_IDS:
            assert str(ds.get(kw, "")) != str(src.get(kw)), kw
        assert ds.PatientBirthDate == "" and ds.PatientIdentityRemoved == "YES"
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert ds[kw].value != src[kw].value, kw
        assert ds.SOPInstanceUID not in {pydicom.dcmread(f).SOPInstanceUID for f in ref.files}
    # the source images are still cited, under their remapped UIDs (`medrecon.datasets.deid`)
    cited = [d.SourceImageSequence[0].ReferencedSOPInstanceUID
             for d in sorted(dss, key=lambda d: d.InstanceNumber)]
    assert cited == [remap_uid(uid) for _, uid, _ in ref.source_refs]
    assert not set(cited) & {uid for _, uid, _ in ref.source_refs}


def test_anonymize_false_carries_identifiers(ct_dir, tmp_path):
    ref = read_dicom_series(ct_dir)
    src = pydicom.dcmread(ref.files[0])
    out = write_dicom_series(ref.volume, tmp_path / "id", ref, anonymize=False,
                             series_description="DDIM 50 steps")
    dss = sorted(_check_valid_files(out, "CT"), key=lambda d: d.InstanceNumber)
    for kw in SOURCE_IDS + ("StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
        assert str(dss[0][kw].value) == str(src[kw].value), kw
    assert dss[0].SeriesInstanceUID != src.SeriesInstanceUID
    assert dss[0].SeriesDescription == "DDIM 50 steps"
    refs = [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in dss]
    assert refs == [pydicom.dcmread(f).SOPInstanceUID for f in ref.files]


def test_overwrite_refusal_and_replace(ct_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    ref = read_dicom_series(ct_dir)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dicom_series(ref.volume, out, ref)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="NaN"):
        write_dicom_series(np.full(ref.volume.shape, np.nan), tmp_path / "nan", ref)
    with pytest.raises(ValueError, match="reference series shape"):
        write_dicom_series(ref.volume[:, :8], tmp_path / "crop", ref)
    write_dicom_series(ref.volume, out, ref, overwrite=True)  # series replaced, folder kept
    assert sorted(os.listdir(out)) == [f"IM{k:05d}.dcm" for k in range(1, 6)] + ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["ct", "out"]  # no temp folders left behind


def test_enhanced_multiframe_per_frame_groups(tmp_path):
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (real enhanced CT file)")
    ds = pydicom.dcmread(path)
    # per-frame PixelValueTransformation overriding the shared one
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pvt = pydicom.Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1 + i, -1000 * i, "US"
        item.PixelValueTransformationSequence = pydicom.Sequence([pvt])
    edited = tmp_path / "ect.dcm"
    ds.save_as(edited)
    raw = ds.pixel_array.astype(np.float32)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2])
         for f in ds.PerFrameFunctionalGroupsSequence]
    s = read_dicom_series(edited)
    # normal = cross((-1,0,0), (0,1,0)) = (0,0,-1): frames sort by decreasing z
    order = np.argsort(-np.array(z))
    want = np.stack([raw[i] * (1 + i) - 1000 * i for i in order])
    np.testing.assert_array_equal(s.volume, want)
    np.testing.assert_allclose(s.slice_positions[:, 2], np.array(z)[order])
    assert s.pixel_spacing == (0.388672, 0.388672) and s.slice_thickness == 10.0
    shared = read_dicom_series(path)  # shared group: intercept -1024 on every frame
    np.testing.assert_array_equal(shared.volume, raw[order] - 1024)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_files_pass_dciodvfy(ct_dir, tmp_path, modality):
    """IOD check by dicom3tools' dciodvfy (Debian package dicom3tools) when installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("needs dciodvfy (apt-get install dicom3tools)")
    ref = read_dicom_series(ct_dir)
    for anonymize in (True, False):
        out = write_dicom_series(ref.volume * 0.5, tmp_path / f"{anonymize}", ref,
                                 modality=modality, anonymize=anonymize)
        report = subprocess.run([exe, str(out / "IM00002.dcm")], capture_output=True, text=True)
        errors = [ln for ln in (report.stdout + report.stderr).splitlines()
                  if ln.startswith("Error")]
        assert errors == [], errors
