"""DICOM series in: a folder of single-frame slices or one enhanced multi-frame file read into a
float volume with its geometry (`DicomSeries`).

Array convention (shared with `medrecon.datasets.nifti`, see `medrecon.datasets.geometry`):
``volume[k, r, c]`` = slice k (sorted by position along the slice normal
``cross(IOP[:3], IOP[3:])``, never by file name or InstanceNumber), row r, column c;
``affine`` maps ``(k, r, c)`` to DICOM patient coordinates (LPS, mm), ``ras_affine`` to NIfTI RAS.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from ..geometry import dicom_affine, lps_to_ras, slice_normal
from ..limits import reader_errors

__all__ = ["DicomSeries", "read_dicom_series"]

_ATOL = 1e-4  # direction-cosine tolerance


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


_CORRUPT = (TypeError, KeyError, IndexError, AttributeError, OverflowError, OSError, EOFError,
            NotImplementedError, RuntimeError)


def _file_frames(ds: Dataset, path: Path) -> list[dict]:
    """`_frames_of_file`, with corrupt-data errors of pydicom/numpy as ValueErrors naming ``path``."""
    with reader_errors(path, "corrupt DICOM data", _CORRUPT):
        return _frames_of_file(ds, path)


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
