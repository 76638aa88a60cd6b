"""DICOM series in and out: read a folder of slices or one enhanced multi-frame file into a float
volume with its geometry, and write a reconstruction back as a derived single-frame series.

Array convention (shared with `medrecon.datasets.nifti`, see `medrecon.datasets.geometry`):
``volume[k, r, c]`` = slice k (sorted by position along the slice normal
``cross(IOP[:3], IOP[3:])``, never by file name or InstanceNumber), row r, column c;
``affine`` maps ``(k, r, c)`` to DICOM patient coordinates (LPS, mm), ``ras_affine`` to NIfTI RAS.

Pixel encoding on write: unsigned 16-bit with one RescaleSlope/RescaleIntercept per series,
``value = stored * slope + intercept``.  Integer-valued data spanning <= 65535 are stored exactly
(slope 1); otherwise ``slope = (max - min) / 65535`` and the error is at most one ``slope``.  The
Rescale attributes are also written for MR (standard extended SOP class, honoured by pydicom,
nibabel, dcm2niix, ITK and viewers).  Series go to a temporary folder published without
clobbering (`_publish_series`); ``overwrite`` replaces only the series medrecon wrote there.
"""
from __future__ import annotations

import datetime
import io
import errno
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from .deid import CARRIED, deidentify, keep_identity, remap_uid
from .geometry import affine_to_dicom, dicom_affine, lps_to_ras, slice_normal
from .permissions import public_mode
from .publish import OutputExistsError, printable, temp_path

__all__ = ["DicomSeries", "read_dicom_series", "write_dicom_series"]

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_ATOL = 1e-4  # direction-cosine tolerance

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


@dataclass
class DicomSeries:
    """A DICOM image series as a volume plus the geometry and metadata needed to write it back."""

    volume: np.ndarray                 # float32 [slices, rows, cols], modality LUT applied
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    slice_positions: np.ndarray        # [slices, 3] ImagePositionPatient (LPS mm), sorted
    orientation: np.ndarray            # ImageOrientationPatient 6-vector
    slice_thickness: float | None      # SliceThickness as stored (may be absent)
    slice_spacing: float               # distance between consecutive slice origins (mm)
    affine: np.ndarray                 # 4x4 LPS for (k, r, c)
    header: Dataset                    # first slice's header without pixel data
    files: list[Path] = field(default_factory=list)
    source_refs: list[tuple[str, str, int | None]] = field(default_factory=list)  # per slice

    @property
    def ras_affine(self) -> np.ndarray:
        """The NIfTI (RAS) affine for the same ``(k, r, c)`` indices."""
        return lps_to_ras(self.affine)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))


# --------------------------------------------------------------------------------- reading
def _dcmread(path: Path, **kw) -> tuple[Dataset | None, str]:
    """(dataset, "") or (None, why it is not readable DICOM); accepts preamble-less files.

    Without ``defer_size`` a file under 64 MiB is parsed from memory: an element whose length
    field is corrupt (up to 4 GiB) then reads what is there instead of allocating that length."""
    if "defer_size" not in kw:
        try:
            if path.stat().st_size < 64 << 20:
                buf = io.BytesIO(path.read_bytes())
                buf.name = str(path)  # for pydicom's messages; never reopened (no deferral)
                path = buf
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
    try:
        if isinstance(path, io.BytesIO):
            path.seek(0)
        return pydicom.dcmread(path, **kw), ""
    except InvalidDicomError as exc:
        why = str(exc)
    except Exception as exc:  # truncated / corrupt DICOM
        return None, f"{type(exc).__name__}: {exc}"
    try:
        if isinstance(path, io.BytesIO):
            path.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, **kw)
        return (ds, "") if "SOPClassUID" in ds else (None, why)
    except Exception:
        return None, why


def _floats(v, n: int, what: str, src) -> np.ndarray:
    if v is None:
        raise ValueError(f"{src}: missing {what}; not a cross-sectional image with geometry")
    vals = list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else [v]
    try:
        a = np.asarray([float(x) for x in vals])
    except (TypeError, ValueError):
        a = np.empty(0)
    if a.shape != (n,) or not np.isfinite(a).all():
        raise ValueError(f"{src}: {what} must be {n} finite numbers, got {vals}")
    return a


def _fg(ds: Dataset, frame: Dataset | None, seq: str, attr: str):
    """Attribute from the per-frame, then shared functional group, then the top level."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in (frame, shared[0] if shared else None):
        if group is not None and seq in group and len(group[seq].value):
            item = group[seq].value[0]
            if attr in item:
                return item[attr].value
    return ds.get(attr)


def _pixels(ds: Dataset, src) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID"))
        raise ValueError(f"{src}: DICOM file has no image data (PixelData); SOP class {sop}")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{src}: colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not "
                         "supported; expected a greyscale CT/MR image")
    ts = getattr(ds.get("file_meta", Dataset()).get("TransferSyntaxUID"), "name", "?")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = ds.pixel_array
    except Exception as exc:
        raise ValueError(f"{src}: cannot decode pixel data (transfer syntax {ts}): {exc}") from None
    for w in caught:  # pydicom drops surplus bytes as "padding": Rows/Columns do not fit the data
        if "excess padding" in str(w.message):
            raise ValueError(f"{src}: pixel data length does not match Rows x Columns x frames "
                             f"x BitsAllocated ({w.message})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return arr


def _assemble(frames: list[dict], src, allow_irregular_spacing: bool = False) -> DicomSeries:
    """Check consistency, sort frames along the normal and build the series.  Slice gaps along
    the normal must agree within max(1 % of their mean, 0.01 mm) -- a missing, duplicated or
    unreadable slice shows up so -- unless ``allow_irregular_spacing`` (then a warning)."""
    first = frames[0]
    for f in frames[1:]:
        if f["pixels"].shape != first["pixels"].shape:
            raise ValueError(f"{f['src']}: rows/cols {f['pixels'].shape} differ from "
                             f"{first['pixels'].shape} in {first['src']} (same series)")
        if not np.allclose(f["iop"], first["iop"], atol=_ATOL):
            raise ValueError(f"{f['src']}: ImageOrientationPatient {f['iop'].tolist()} differs "
                             f"from {first['iop'].tolist()} in {first['src']} (same series)")
        if not np.allclose(f["spacing"], first["spacing"], rtol=1e-4):
            raise ValueError(f"{f['src']}: PixelSpacing {f['spacing'].tolist()} differs from "
                             f"{first['spacing'].tolist()} in {first['src']} (same series)")
    normal = slice_normal(first["iop"])
    proj = np.array([f["ipp"] @ normal for f in frames])
    order = np.argsort(proj, kind="stable")
    frames = [frames[i] for i in order]
    pos = np.stack([f["ipp"] for f in frames])
    gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    if len(gaps) and gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise ValueError(f"{src}: {frames[i]['src']} and {frames[i + 1]['src']} are at the same "
                         "position (several echoes/phases in one series?); not supported")
    thick, header = first["thickness"], frames[0]["header"]
    if len(frames) > 1:
        step = (pos[-1] - pos[0]) / (len(frames) - 1)
        spacing = float(np.linalg.norm(step))
        along = np.diff(np.sort(proj))
        if along.max() - along.min() > max(1e-2 * float(along.mean()), 1e-2):
            i = int(np.argmax(np.abs(along - np.median(along))))
            what = (f"{src}: non-uniform slice spacing along the slice normal "
                    f"({along.min():.4g}..{along.max():.4g} mm; {frames[i]['src']} to "
                    f"{frames[i + 1]['src']}: {along[i]:.4g} mm)")
            if not allow_irregular_spacing:
                raise ValueError(f"{what}: a missing, extra or unreadable slice? Pass "
                                 "allow_irregular_spacing=True (CLI --allow-irregular-spacing) "
                                 "to read it with the mean spacing")
            warnings.warn(f"{what}; `affine` uses the mean step, `slice_positions` are exact",
                          stacklevel=3)
    else:
        sbs = header.get("SpacingBetweenSlices")
        spacing = float(sbs) if sbs else (thick or 1.0)
        step = spacing * normal
    volume = np.stack([f["pixels"] for f in frames]).astype(np.float32)
    return DicomSeries(
        volume=volume, pixel_spacing=tuple(float(x) for x in first["spacing"]),
        slice_positions=pos, orientation=first["iop"], slice_thickness=thick,
        slice_spacing=spacing, affine=dicom_affine(first["iop"], first["spacing"], pos[0], step),
        header=header, files=list(dict.fromkeys(f["file"] for f in frames)),
        source_refs=[f["ref"] for f in frames])


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, Float/DoubleFloatPixelData


def _header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without pixel data (and without pydicom's decoded-pixel cache)."""
    h = Dataset({t: ds[t] for t in ds.keys() if t not in _PIXEL_TAGS})
    if getattr(ds, "file_meta", None) is not None:
        h.file_meta = ds.file_meta
    return h


def _frames_of_file(ds: Dataset, path: Path) -> list[dict]:
    """Frames of one file (single-frame or enhanced multi-frame) with geometry and rescale."""
    arr = _pixels(ds, path)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if nf == 1:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != nf:
        raise ValueError(f"{path}: unexpected pixel array shape {arr.shape} for {nf} frame(s)")
    if nf > 1 and per is None:
        raise ValueError(f"{path}: multi-frame file without PerFrameFunctionalGroupsSequence "
                         "(no per-frame ImagePositionPatient); cannot place the frames")
    frames, header = [], _header(ds)
    for i in range(nf):
        item = per[i] if per is not None else None
        src = f"{path} frame {i + 1}" if nf > 1 else path
        if item is None:  # classic single-frame image: pydicom applies the modality LUT
            pix = apply_modality_lut(arr[i], ds)
        else:
            slope = _fg(ds, item, "PixelValueTransformationSequence", "RescaleSlope")
            inter = _fg(ds, item, "PixelValueTransformationSequence", "RescaleIntercept")
            pix = arr[i] * float(1.0 if slope is None else slope) + float(inter or 0.0)
        thick = _fg(ds, item, "PixelMeasuresSequence", "SliceThickness")
        frames.append({
            "pixels": np.asarray(pix, dtype=np.float32), "src": src, "file": path, "header": header,
            "ipp": _floats(_fg(ds, item, "PlanePositionSequence", "ImagePositionPatient"), 3,
                           "ImagePositionPatient", src),
            "iop": _floats(_fg(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient"),
                           6, "ImageOrientationPatient", src),
            "spacing": _floats(_fg(ds, item, "PixelMeasuresSequence", "PixelSpacing"), 2,
                               "PixelSpacing", src),
            "thickness": float(thick) if thick not in (None, "") else None,
            "ref": (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                    i + 1 if nf > 1 else None)})
    return frames


def _claims_dicom(p: Path) -> bool:
    """True for a file that says it is DICOM (``DICM`` at byte 128; a name is no claim)."""
    try:
        with open(p, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _file_frames(ds: Dataset, path: Path) -> list[dict]:
    """`_frames_of_file`, with corrupt-data errors of pydicom/numpy as ValueErrors naming ``path``."""
    try:
        return _frames_of_file(ds, path)
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: {exc}") from None
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError, OSError, EOFError,
            NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"{path}: corrupt DICOM data ({type(exc).__name__}: {exc})") from None


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom_series(path, series_uid: str | None = None, *,
                      allow_irregular_spacing: bool = False) -> DicomSeries:
    """Read a folder of single-frame slices (one series) or one (multi-frame) DICOM file.

    Non-DICOM files in a folder (README, JSON...) are skipped; a folder holding several image
    series needs ``series_uid=``.  Raises ValueError naming the file/folder on every problem,
    among them: a file that claims to be DICOM (``DICM`` after its preamble) but cannot be
    read, a file of the series without pixel data, and non-uniform slice spacing (unless
    ``allow_irregular_spacing``): a series never silently loses a slice.
    """
    path = Path(path)
    if path.is_file():
        ds, why = _dcmread(path)
        if ds is None:
            raise ValueError(f"{path}: not a DICOM file ({why})")
        if series_uid is not None and ds.get("SeriesInstanceUID") != series_uid:
            raise ValueError(f"{path}: SeriesInstanceUID is {ds.get('SeriesInstanceUID')}, "
                             f"not {series_uid}")
        return _assemble(_file_frames(ds, path), path, allow_irregular_spacing)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    no_pixels: dict[str, list[Path]] = {}
    scanned = 0
    for p in sorted(q for q in path.iterdir() if q.is_file() and not q.name.startswith(".")):
        scanned += 1
        ds, why = _dcmread(p, defer_size="4 KB")
        if ds is None:
            if _claims_dicom(p):
                raise ValueError(f"{p}: unreadable DICOM file in series folder {path} ({why}); "
                                 "the series would lose a slice: repair or remove it")
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if any(k in ds for k in _PIXEL_KEYWORDS):
            series.setdefault(uid, []).append((p, ds))
            continue
        meta = getattr(ds, "file_meta", None) or Dataset()
        sop = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        if sop is not None and "Image Storage" in getattr(pydicom.uid.UID(str(sop)), "name", ""):
            raise ValueError(f"{p}: DICOM image ({pydicom.uid.UID(str(sop)).name}) without pixel "
                             "data, truncated or incomplete; the series would lose a slice: "
                             "repair or remove it")
        no_pixels.setdefault(uid, []).append(p)
    if not series:
        raise ValueError(f"{path}: no DICOM image files found ({scanned} files scanned; "
                         "subfolders are not searched)")
    if series_uid is None and len(series) > 1:
        found = ", ".join(f"{uid} ({len(v)} files)" for uid, v in series.items())
        raise ValueError(f"{path}: folder holds {len(series)} series: {found}; choose one with "
                         "series_uid= (Python API), or give each series its own folder")
    uid = series_uid if series_uid is not None else next(iter(series))
    if uid not in series:
        raise ValueError(f"{path}: no series {uid}; found {', '.join(series)}")
    if uid in no_pixels:
        p = no_pixels[uid][0]
        raise ValueError(f"{p}: file of series {uid} has no pixel data (PixelData); the series "
                         "would lose a slice: repair or remove it")
    items = series.pop(uid)
    src = items[0][0] if len(items) == 1 else path
    frames = []
    while items:  # drop each dataset (and its decoded pixels) once its frames are taken
        p, ds = items.pop(0)
        if len(frames) + len(items) > 0 and int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"{p}: multi-frame file mixed with other files of series {uid}; "
                             "read it on its own")
        frames += _file_frames(ds, p)
    return _assemble(frames, src, allow_irregular_spacing)


# --------------------------------------------------------------------------------- writing
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
