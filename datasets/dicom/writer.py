"""DICOM series out: a reconstruction written back as a derived single-frame CT/MR series.

Pixel encoding on write: unsigned 16-bit with one RescaleSlope/RescaleIntercept per series,
``value = stored * slope + intercept``.  Integer-valued data spanning <= 65535 are stored exactly
(slope 1); otherwise ``slope = (max - min) / 65535`` and the error is at most one ``slope``.  The
Rescale attributes are also written for MR (standard extended SOP class, honoured by pydicom,
nibabel, dcm2niix, ITK and viewers).  Series go to a temporary folder published without
clobbering (`_publish_series`); ``overwrite`` replaces only the series medrecon wrote there.
Geometry follows the convention of `medrecon.datasets.dicom.reader`.
"""
from __future__ import annotations

import datetime
import errno
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ..deid import CARRIED, deidentify, keep_identity, remap_uid
from ..geometry import affine_to_dicom, dicom_affine, slice_normal
from ..permissions import public_mode
from ..publish import OutputExistsError, printable, temp_path
from .reader import DicomSeries, _dcmread, read_dicom_series

__all__ = ["write_dicom_series"]

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}

# Patient/study/frame-of-reference attributes copied from the reference with anonymize=False;
# de-identifying, only `deid.CARRIED` is copied (and then pseudonymized by `deid.deidentify`).
_IDENTIFYING = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "OtherPatientIDs",
                "EthnicGroup", "PatientComments", "StudyInstanceUID", "StudyDate", "StudyTime",
                "StudyID", "StudyDescription", "AccessionNumber", "ReferringPhysicianName",
                "InstitutionName", "InstitutionAddress", "FrameOfReferenceUID",
                "PositionReferenceIndicator")
# Technical acquisition attributes, not identifying: always copied when present.
_TECHNICAL = ("BodyPartExamined", "PatientPosition", "Laterality", "ScanningSequence",
              "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
              "RepetitionTime", "EchoTime", "InversionTime", "EchoTrainLength", "FlipAngle",
              "MagneticFieldStrength", "ImagingFrequency", "ImagedNucleus", "KVP",
              "XRayTubeCurrent", "ExposureTime", "ConvolutionKernel")


def _ds(x) -> str:
    return format_number_as_ds(float(x))


def _encode(vol: np.ndarray) -> tuple[np.ndarray, str, str]:
    """uint16 stored values and the (slope, intercept) DS strings they decode with."""
    lo, hi = float(vol.min()), float(vol.max())
    if np.array_equal(vol, np.round(vol)) and hi - lo <= 65535:
        slope = 1.0
    else:
        slope = (hi - lo) / 65535 if hi > lo else 1.0
    slope_s, inter_s = _ds(slope), _ds(lo)
    if float(slope_s) <= 0:
        slope_s = _ds(np.nextafter(0, 1) if slope <= 0 else slope)
    q = np.rint((vol.astype(np.float64) - float(inter_s)) / float(slope_s))
    return np.clip(q, 0, 65535).astype("<u2"), slope_s, inter_s


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _save(path: Path, ds: Dataset) -> None:
    try:  # pydicom >= 3 validates the File Meta and writes the preamble
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)


_OUR_FILE = re.compile(r"IM\d{5}\.dcm")  # the names write_dicom_series gives its files


def _series_files(out: Path) -> list[Path]:
    """The files of a series medrecon wrote in folder ``out`` (named ``IMnnnnn.dcm`` and
    Manufacturer ``medrecon``).  FileExistsError if ``out`` holds a DICOM image medrecon did not
    write, or a non-DICOM file under one of medrecon's names: a series is never written among
    another series, and unrelated files are never replaced."""
    ours = []
    for p in sorted(q for q in out.iterdir() if not q.name.startswith(".") and q.is_file()):
        ds, _ = _dcmread(p, stop_before_pixels=True)
        mine = ds is not None and str(ds.get("Manufacturer", "")) == "medrecon"
        if mine and _OUR_FILE.fullmatch(p.name):
            ours.append(p)
        elif ds is not None and "SOPClassUID" in ds:
            raise FileExistsError(f"{printable(out)} holds {printable(p.name)}, a DICOM file "
                                  "medrecon did not write; not writing a series next to it: "
                                  "choose an empty or new output folder")
        elif _OUR_FILE.fullmatch(p.name):
            raise FileExistsError(f"{printable(p)} is not a medrecon DICOM file; not replacing "
                                  "it: choose an empty or new output folder")
    return ours


def _publish_series(tmp: Path, out: Path, overwrite: bool) -> None:
    """Publish the finished series folder ``tmp`` as ``out``.

    A new (or empty) ``out``: one ``rename`` of the whole folder -- atomic, and of two concurrent
    writers exactly one wins (a non-empty folder cannot be renamed over; the loser gets
    OutputExistsError).  An existing non-empty ``out`` (``overwrite`` only): series by series --
    the new files replace medrecon's files of the same name, then medrecon's leftover files of
    the old series are deleted; other files and the folder itself are kept (`_series_files`).
    """
    public_mode(tmp, directory=True)
    if not out.is_dir() or not any(out.iterdir()):
        try:
            os.rename(tmp, out)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputExistsError(f"{printable(out)} exists (another writer?); pass "
                                        "overwrite=True (--overwrite) to replace it") from None
            raise
        return
    if not overwrite:
        raise OutputExistsError(f"{printable(out)} exists and is not empty; pass overwrite=True "
                                "(--overwrite) to replace the series medrecon wrote there")
    old = _series_files(out)
    new = sorted(tmp.iterdir())
    for f in new:
        os.replace(f, out / f.name)
    names = {f.name for f in new}
    for f in old:
        if f.name not in names:
            f.unlink(missing_ok=True)
    tmp.rmdir()


def _grid(S: int, affine, ref: DicomSeries | None, shape) -> dict:
    """Orientation, pixel spacing, per-slice positions, spacing and thickness to write."""
    if affine is not None:
        g = affine_to_dicom(affine, S)
        return {**g, "thickness": g["slice_spacing"]}
    if ref is not None:
        if ref.volume.shape != tuple(shape):
            raise ValueError(f"volume shape {tuple(shape)} differs from the reference series shape "
                             f"{ref.volume.shape}; pass affine= for a different grid")
        return {"orientation": ref.orientation, "pixel_spacing": ref.pixel_spacing,
                "positions": ref.slice_positions, "slice_spacing": ref.slice_spacing,
                "thickness": ref.slice_thickness or ref.slice_spacing}
    g = affine_to_dicom(dicom_affine((1, 0, 0, 0, 1, 0), (1, 1), (0, 0, 0), 1.0), S)
    return {**g, "thickness": 1.0}


def _patient_study(base: Dataset, header: Dataset, anonymize: bool) -> None:
    """Patient/study/frame-of-reference attributes copied from ``header`` (all of
    ``_IDENTIFYING``, or only `deid.CARRIED` when ``anonymize``), the missing ones fresh/empty."""
    for kw in CARRIED if anonymize else _IDENTIFYING + ("BurnedInAnnotation",):
        if kw in header:
            el = header[kw]
            setattr(base, kw, str(el.value) if el.VR == "PN" else el.value)
    if anonymize and str(header.get("BurnedInAnnotation", "")).upper() == "YES":
        base.BurnedInAnnotation = "YES"  # for `deidentify` to refuse
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "PositionReferenceIndicator", "Laterality", "PatientPosition"):
        base.setdefault(kw, "")
    base.setdefault("StudyInstanceUID", generate_uid())
    base.setdefault("FrameOfReferenceUID", generate_uid())


def write_dicom_series(volume, out_dir, reference: DicomSeries | str | os.PathLike | None = None,
                       *, affine=None, modality: str | None = None, anonymize: bool = True,
                       series_description: str = "medrecon reconstruction",
                       derivation_description: str = "Reconstructed with medrecon",
                       series_number: int | None = None, window: tuple[float, float] | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``volume`` ``[slices, rows, cols]`` (real) as a derived single-frame CT/MR series.

    Geometry comes from ``affine`` (LPS, `medrecon.datasets.geometry` convention) or else the
    reference series (same shape required), else a 1 mm axial grid at the origin.  Patient and
    study identifiers are copied from the reference only with ``anonymize=False``; by default
    the series is de-identified by `medrecon.datasets.deid` (PS3.15 Basic Profile: names, IDs
    and UIDs pseudonymized consistently within the process, dates shifted), keeping the geometry.
    With a reference of the same grid each slice cites its source image in SourceImageSequence
    (with the remapped UIDs when de-identifying).  ``window`` is (center, width) in output units; by
    default it spans the data.  A new or empty ``out_dir`` is published at once; an existing
    one only with ``overwrite``, which replaces the medrecon series in it (files
    ``IMnnnnn.dcm`` of Manufacturer medrecon) and keeps everything else.  Returns ``out_dir``.
    """
    out = Path(out_dir)
    vol = _np(volume)
    if np.iscomplexobj(vol):
        raise ValueError("volume is complex; write np.abs(volume) (magnitude) or its real part")
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or 0 in vol.shape:
        raise ValueError(f"volume must be [slices, rows, cols], got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or Inf")
    if os.path.lexists(out) and not out.is_dir():
        raise FileExistsError(f"{printable(out)} is a file, not a series folder; not replacing "
                              "it: choose another output")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{printable(out)} exists and is not empty; pass "
                                    "overwrite=True (--overwrite) to replace it")
        _series_files(out)  # refuse a folder holding another series before any work
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{printable(out.parent)}: output folder does not exist")
    ref = read_dicom_series(reference) if isinstance(reference, (str, os.PathLike)) else reference
    S, R, C = vol.shape
    grid = _grid(S, affine, ref, vol.shape)
    modality = (modality or (ref.modality if ref is not None else "") or "MR").upper()
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}; pass modality=")
    stored, slope_s, inter_s = _encode(vol)
    lo, hi = float(vol.min()), float(vol.max())
    center, width = window if window is not None else ((lo + hi) / 2, max(hi - lo, 1.0))
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ValueError(f"window must be (center, width) with width > 0, got {window}")
    header = ref.header if ref is not None else Dataset()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 192"
    # value 3 is required for CT/MR images: AXIAL (CT cross-section) / OTHER (MR)
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
    base.SOPClassUID = SOP_CLASSES[modality]
    base.InstanceCreationDate, base.InstanceCreationTime = date, time
    base.SeriesDate, base.SeriesTime, base.ContentDate, base.ContentTime = date, time, date, time
    base.Modality = modality
    base.SeriesInstanceUID = generate_uid()
    base.SeriesNumber = series_number if series_number is not None else int(
        header.get("SeriesNumber", 0) or 0) + 1000
    base.SeriesDescription = series_description[:64]
    base.DerivationDescription = derivation_description[:1024]
    base.Manufacturer, base.SoftwareVersions = "medrecon", "medrecon"
    deid = anonymize or ref is None
    _patient_study(base, header, deid)
    for kw in _TECHNICAL:
        if kw in header:
            base[kw] = header[kw]
    if modality == "MR":  # MR Image module: type 1 sequence attributes, type 2 timings
        for kw, default in (("ScanningSequence", "RM"), ("SequenceVariant", "NONE"),
                            ("ScanOptions", ""), ("MRAcquisitionType", ""), ("EchoTime", ""),
                            ("EchoTrainLength", ""), ("RepetitionTime", "")):
            base.setdefault(kw, default)
    else:
        base.setdefault("KVP", "")
        base.AcquisitionNumber = ""
    base.ImageOrientationPatient = [_ds(v) for v in grid["orientation"]]
    base.PixelSpacing = [_ds(v) for v in grid["pixel_spacing"]]
    base.SliceThickness = _ds(grid["thickness"])
    base.SpacingBetweenSlices = _ds(grid["slice_spacing"])
    base.SamplesPerPixel, base.PhotometricInterpretation = 1, "MONOCHROME2"
    base.Rows, base.Columns = R, C
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 0
    base.RescaleIntercept, base.RescaleSlope = inter_s, slope_s
    base.WindowCenter, base.WindowWidth = _ds(center), _ds(width)
    if deid:
        deidentify(base, str(ref.files[0]) if ref is not None and ref.files else "reference")
    else:
        keep_identity(base)
    link = ref is not None and affine is None and len(ref.source_refs) == S
    sources = [(c, remap_uid(u) if deid else u, f) for c, u, f in ref.source_refs] if link else []
    normal = slice_normal(grid["orientation"])

    # the temp folder sits where its files go: next to a new series, inside an existing one
    tmp = temp_path(out / out.name if out.is_dir() and any(out.iterdir()) else out)
    tmp.mkdir()
    try:
        for k in range(S):
            ds = base.copy()
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(v) for v in grid["positions"][k]]
            ds.SliceLocation = _ds(float(np.dot(grid["positions"][k], normal)))
            if link:
                src = Dataset()
                src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = sources[k][:2]
                if sources[k][2] is not None:
                    src.ReferencedFrameNumber = sources[k][2]
                ds.SourceImageSequence = Sequence([src])
            ds.PixelData = stored[k].tobytes()
            ds["PixelData"].VR = "OW"
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            _save(tmp / f"IM{k + 1:05d}.dcm", ds)
        _publish_series(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
