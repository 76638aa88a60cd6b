"""DICOM outputs are de-identified by default (PS3.15 Basic Profile, `medrecon.datasets.deid`):
no byte of the source's identity survives, UIDs are remapped consistently within the process,
and the geometry still overlays the source; ``anonymize=False`` / ``--keep-phi`` opts out."""
from __future__ import annotations

import dicognito
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medrecon.cli.main import main
from medrecon.datasets.deid import remap_uid
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.geometry import dicom_affine

S, H, W = 3, 32, 24
AFFINE = dicom_affine((0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (0.9, 1.1), (-20.0, 15.0, 30.0), 2.0)
STUDY_UID, FOR_UID, SERIES_UID = generate_uid(), generate_uid(), generate_uid()
PHI = {  # what a hospital series says about its patient, study, site and device
    "PatientName": "DOE^JANE", "PatientID": "MRN12345", "PatientBirthDate": "19700101",
    "PatientSex": "F", "PatientAge": "054Y", "PatientWeight": "61.5",
    "OtherPatientIDs": "OTHERID777", "IssuerOfPatientID": "St Example Hospital MRN",
    "PatientComments": "Jane lives on Example Road", "AccessionNumber": "ACC999",
    "StudyID": "STUDY4711", "StudyDate": "20240315", "StudyTime": "101530.123456",
    "SeriesDate": "20240315", "AcquisitionDate": "20240315",
    "StudyDescription": "MRI BRAIN FOR JANE DOE", "SeriesDescription": "T1 JANE DOE",
    "ImageComments": "patient Jane Doe, bed 12", "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "12 Example Road, Exampletown", "StationName": "EXAMPLEMR01",
    "ReferringPhysicianName": "HOUSE^GREGORY", "OperatorsName": "TECH^TOM",
    "DeviceSerialNumber": "SN-424242", "Manufacturer": "Example Scanners",
    "StudyInstanceUID": STUDY_UID, "FrameOfReferenceUID": FOR_UID,
    "SeriesInstanceUID": SERIES_UID, "InPlanePhaseEncodingDirection": "ROW",
}
# strings whose bytes must not appear in a de-identified output (PatientSex 'F' and the like
# are too short to grep; they are checked by value)
PHI_STRINGS = [v for k, v in PHI.items() if k not in (
    "PatientSex", "PatientAge", "PatientWeight", "Manufacturer", "SeriesDate", "AcquisitionDate",
    "InPlanePhaseEncodingDirection")] + ["Private Jane Doe", "DOE JANE PRIVATE"]
ACS = ["--acceleration", "2", "--center-fraction", "0.25", "--quiet"]


def _phantom() -> np.ndarray:
    r, c = np.mgrid[:H, :W]
    return np.stack([800.0 * (((r - 15 - k) / 11.0) ** 2 + ((c - 12) / 9.0) ** 2 < 1)
                     + 40.0 * np.sin(c / 3.0) for k in range(S)]).astype(np.float32)


def _phi_series(path):
    """A 3-slice MR series carrying PHI in standard, private and nested elements; returns it
    with the list of its SOPInstanceUIDs."""
    write_dicom_series(_phantom(), path, affine=AFFINE, modality="MR")
    uids = []
    for f in sorted(path.iterdir()):
        ds = pydicom.dcmread(f)
        for kw in ("PatientIdentityRemoved", "DeidentificationMethod", "BurnedInAnnotation",
                   "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified"):
            del ds[kw]
        for kw, v in PHI.items():
            setattr(ds, kw, v)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        block = ds.private_block(0x0029, "EXAMPLE HOSPITAL 1.0", create=True)
        block.add_new(0x10, "LO", "Private Jane Doe")
        block.add_new(0x11, "UN", b"DOE JANE PRIVATE")
        ds.save_as(f)
        uids.append(str(ds.SOPInstanceUID))
    return path, uids


@pytest.fixture(scope="module")
def phi_series(tmp_path_factory):
    return _phi_series(tmp_path_factory.mktemp("phi") / "series")


def _assert_no_phi(out, src_uids):
    files = sorted(out.iterdir())
    assert len(files) == S
    secrets = [s.encode() for s in PHI_STRINGS] + [u.encode() for u in src_uids]
    for f in files:
        raw = f.read_bytes()
        leaked = [s for s in secrets if s in raw]
        assert leaked == [], (f.name, leaked)
    return [pydicom.dcmread(f) for f in files]


def _assert_deidentified_attributes(dss):
    for ds in dss:
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert ds.DeidentificationMethod[0] == ("DICOM PS3.15 Basic Application Level "
                                                "Confidentiality Profile")
        assert f"dicognito {dicognito.__version__}" in ds.DeidentificationMethod
        codes = [(c.CodeValue, c.CodingSchemeDesignator)
                 for c in ds.DeidentificationMethodCodeSequence]
        assert codes == [("113100", "DCM"), ("113107", "DCM")]
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert not any(el.tag.is_private for el in ds.iterall())
        for kw in ("PatientSex", "PatientBirthDate", "ReferringPhysicianName"):
            assert ds.get(kw, "") == "", kw  # Table E.1-1 action Z
        for kw in ("PatientAge", "PatientWeight", "OtherPatientIDs", "StudyDescription",
                   "ImageComments", "InstitutionName", "InstitutionAddress", "StationName",
                   "DeviceSerialNumber", "OperatorsName", "IssuerOfPatientID"):
            assert kw not in ds, kw  # action X
        assert str(ds.PatientName) and ds.PatientID and ds.StudyDate  # pseudonyms, shifted date
    assert len({d.StudyInstanceUID for d in dss}) == len({d.FrameOfReferenceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == S


def test_write_dicom_series_default_leaves_no_phi_byte(phi_series, tmp_path):
    path, src_uids = phi_series
    src = read_dicom_series(path)
    out = write_dicom_series(src.volume * 0.5, tmp_path / "out", reference=src)
    dss = _assert_no_phi(out, src_uids + [STUDY_UID, FOR_UID, SERIES_UID])
    _assert_deidentified_attributes(dss)
    assert {d.StudyInstanceUID for d in dss} == {remap_uid(STUDY_UID)}
    assert {d.FrameOfReferenceUID for d in dss} == {remap_uid(FOR_UID)}
    # the geometry still overlays the source; each slice cites its source under the remapped UID
    back = read_dicom_series(out)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(back.slice_positions, src.slice_positions, atol=1e-5)
    assert back.pixel_spacing == src.pixel_spacing
    assert float(back.header.SliceThickness) == pytest.approx(2.0)
    by_pos = sorted(dss, key=lambda d: d.InstanceNumber)
    assert [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in by_pos] == [
        remap_uid(uid) for _, uid, _ in src.source_refs]


def test_uids_and_pseudonyms_are_consistent_within_a_run(phi_series, tmp_path):
    """Two volumes from one study in one process: one new Study and FrameOfReference UID, one
    pseudonymous patient, dates shifted by the same offset; new series and instance UIDs."""
    path, _ = phi_series
    src = read_dicom_series(path)
    a = [pydicom.dcmread(f) for f in sorted(write_dicom_series(src.volume, tmp_path / "a",
                                                               src).iterdir())]
    b = [pydicom.dcmread(f) for f in sorted(write_dicom_series(src.volume[:2], tmp_path / "b",
                                                               src, affine=src.affine).iterdir())]
    for kw in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID",
               "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        assert len({str(d.get(kw)) for d in a + b}) == 1, kw
    assert a[0].StudyInstanceUID != STUDY_UID and a[0].StudyDate != PHI["StudyDate"]
    assert a[0].StudyTime != PHI["StudyTime"]  # the shift is never a whole number of days
    assert a[0].SeriesInstanceUID != b[0].SeriesInstanceUID
    assert "SourceImageSequence" not in b[0]  # other grid: no slice-to-slice citation


def test_anonymize_false_keeps_identity_and_says_so(phi_series, tmp_path):
    path, src_uids = phi_series
    src = read_dicom_series(path)
    out = write_dicom_series(src.volume, tmp_path / "id", src, anonymize=False)
    dss = sorted((pydicom.dcmread(f) for f in out.iterdir()), key=lambda d: d.InstanceNumber)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
               "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate", "InstitutionName"):
        assert str(dss[0][kw].value) == PHI[kw], kw
    assert dss[0].PatientIdentityRemoved == "NO" and "identity kept" in dss[0].DeidentificationMethod
    assert "DeidentificationMethodCodeSequence" not in dss[0]
    assert [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in dss] == [
        uid for _, uid, _ in src.source_refs]
    assert sorted(uid for _, uid, _ in src.source_refs) == sorted(src_uids)


def test_burned_in_annotation_refused_unless_keep_phi(tmp_path):
    path, _ = _phi_series(tmp_path / "burned")
    for f in path.iterdir():
        ds = pydicom.dcmread(f)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(f)
    src = read_dicom_series(path)
    with pytest.raises(ValueError, match=r"IM00001\.dcm: BurnedInAnnotation is YES.*--keep-phi"):
        write_dicom_series(src.volume, tmp_path / "out", src)
    assert not (tmp_path / "out").exists()
    kept = write_dicom_series(src.volume, tmp_path / "kept", src, anonymize=False)
    assert pydicom.dcmread(next(kept.iterdir())).BurnedInAnnotation == "YES"


def test_cli_recon_dicom_to_dicom_is_deidentified(phi_series, tmp_path):
    path, src_uids = phi_series
    out = tmp_path / "rec"
    assert main(["recon", str(path), "--method", "zero-filled", "--out", str(out),
                 "--format", "dicom", *ACS]) == 0
    dss = _assert_no_phi(out, src_uids + [STUDY_UID, FOR_UID, SERIES_UID])
    _assert_deidentified_attributes(dss)
    for f in out.iterdir():  # nor where the input lives
        assert str(path).encode() not in f.read_bytes()
    back, src = read_dicom_series(out), read_dicom_series(path)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    assert back.header.StudyInstanceUID == remap_uid(STUDY_UID)


def test_cli_keep_phi_keeps_identity(phi_series, tmp_path):
    path, _ = phi_series
    out = tmp_path / "rec"
    assert main(["recon", str(path), "--method", "zero-filled", "--out", str(out),
                 "--format", "dicom", "--keep-phi", *ACS]) == 0
    ds = pydicom.dcmread(next(out.iterdir()))
    assert str(ds.PatientName) == "DOE^JANE" and ds.StudyInstanceUID == STUDY_UID
    assert ds.PatientIdentityRemoved == "NO"
