"""NIfTI-1 volumes in and out, with the DICOM <-> NIfTI geometry conversion.

In memory a volume is ``[slices, rows, cols]`` and its affine maps ``(k, r, c)`` to RAS mm, the
same convention as `medrecon.datasets.dicom` (see `medrecon.datasets.geometry`), so
``write_nifti(s.volume, path, s.ras_affine)`` for a `DicomSeries` ``s`` overlays the DICOM source
in any viewer.  On disk the array is stored in the usual NIfTI ``(x=col, y=row, z=slice)`` order
(like dcm2niix) with the matching affine in both sform and qform (code 1, scanner).
Writes go to a temporary file published without clobbering (`medrecon.datasets.publish`);
existing files are kept unless overwrite=True.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from .limits import check_read_size
from .publish import OutputExistsError, printable, publish, publish_pair, write_temp
from .geometry import (affine_to_dicom, dicom_affine, from_disk_order, lps_to_ras, ras_to_lps,
                       to_disk_order)

__all__ = ["NiftiVolume", "read_nifti", "write_nifti", "sidecar_path", "dicom_to_nifti_affine",
           "nifti_affine_to_dicom"]


class NiftiVolume(NamedTuple):
    volume: np.ndarray   # float32 [slices, rows, cols] (or [frames, slices, rows, cols] for 4D)
    affine: np.ndarray   # RAS 4x4 for (k, r, c) indices
    header: dict         # zooms, units, codes, dtype, disk shape, disk affine, sidecar


def dicom_to_nifti_affine(orientation, pixel_spacing, first_position, slice_step) -> np.ndarray:
    """RAS affine for ``[slices, rows, cols]`` from DICOM IOP / PixelSpacing (row, col) / IPP
    of the first slice / slice step (3-vector or spacing along the normal)."""
    return lps_to_ras(dicom_affine(orientation, pixel_spacing, first_position, slice_step))


def nifti_affine_to_dicom(affine, n_slices: int) -> dict:
    """DICOM geometry (orientation, pixel_spacing, positions [n, 3], slice_spacing) of a RAS
    affine for ``[slices, rows, cols]`` indices."""
    return affine_to_dicom(ras_to_lps(affine), n_slices)


def sidecar_path(path) -> Path:
    """``scan.nii.gz`` -> ``scan.json`` (BIDS-style sidecar next to the image)."""
    p = Path(path)
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(stem + ".json")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_declared_size(img, path: Path) -> None:
    """The header's shape against the read cap (float32 copy + raw data) and, uncompressed,
    against the file size -- before nibabel allocates what a corrupt ``dim`` claims."""
    shape = tuple(int(n) for n in img.shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"{path}: negative image size {shape} in the header")
    n = int(np.prod(shape, dtype=object))
    raw = n * img.header.get_data_dtype().itemsize
    check_read_size(n * 4 + raw, f"the image {shape}", path)
    if not path.name.lower().endswith(".gz"):
        offset = int(img.header.get_data_offset())
        size = path.stat().st_size
        if offset + raw > size:
            raise ValueError(f"{path}: header declares {shape} {img.header.get_data_dtype()} "
                             f"({raw} bytes from offset {offset}) but the file has {size} bytes "
                             "(truncated file or corrupt header)")


def read_nifti(path) -> NiftiVolume:
    """Read ``.nii``/``.nii.gz`` as ``[slices, rows, cols]`` float32 (scl_slope applied).

    2D files come back as one slice; 4D ``(x, y, z, t)`` as ``[t, slices, rows, cols]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types on corrupt headers
        raise ValueError(f"{path}: not a readable NIfTI file: {exc}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image ({type(img).__name__})")
    hdr = img.header
    _check_declared_size(img, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # short data, bad dtype, decompression errors
        raise ValueError(f"{path}: not a readable NIfTI file: {exc}") from None
    disk_shape = data.shape
    if 0 in disk_shape:
        raise ValueError(f"{path}: empty image (shape {disk_shape})")
    a = np.asarray(img.affine, float)
    if not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: the header's affine (sform/qform, pixdim) is not a finite "
                         f"invertible matrix: {a.tolist()}")
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ValueError(f"{path}: expected a 2D, 3D or 4D image, got shape {disk_shape}")
    vol, affine = from_disk_order(data, img.affine)
    side, meta = sidecar_path(path), None
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except ValueError as exc:
            raise ValueError(f"{side}: sidecar is not valid JSON ({exc})") from None
    info: dict[str, Any] = {
        "disk_shape": disk_shape, "disk_affine": img.affine, "zooms": hdr.get_zooms(),
        "units": hdr.get_xyzt_units(), "dtype": str(hdr.get_data_dtype()),
        "qform_code": int(hdr["qform_code"]), "sform_code": int(hdr["sform_code"]),
        "sidecar": meta,
    }
    return NiftiVolume(np.ascontiguousarray(vol, dtype=np.float32), affine, info)


def write_nifti(volume, path, affine, overwrite: bool = False, sidecar: dict | None = None,
                dtype=None) -> Path:
    """Write ``volume`` ``[slices, rows, cols]`` with its RAS ``affine`` (for those indices).

    Floats are stored as float32 (or ``dtype``), integers keep their type.  ``sidecar`` (any
    JSON-serialisable dict, e.g. method and parameters) goes to `sidecar_path`; image and
    sidecar are published as a pair (`medrecon.datasets.publish.publish_pair`: the image never
    appears without its sidecar; no-clobber against other processes unless ``overwrite``).
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"{path}: NIfTI file name must end in .nii or .nii.gz")
    vol = _np(volume)
    if np.iscomplexobj(vol):
        raise ValueError("volume is complex; write np.abs(volume) (magnitude) or its real part")
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be [slices, rows, cols] (or [t, slices, rows, cols]), "
                         f"got shape {vol.shape}")
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite invertible 4x4 matrix, got {a.tolist()}")
    if dtype is None:
        dtype = {"f": np.float32, "b": np.uint8}.get(vol.dtype.kind, vol.dtype)
    side = sidecar_path(path) if sidecar is not None else None
    for p in (path, side):
        if p is not None and os.path.lexists(p) and not overwrite:
            raise OutputExistsError(f"{printable(p)} exists; pass overwrite=True (--overwrite) "
                                    "to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{printable(path.parent)}: output folder does not exist")
    text = json.dumps(sidecar, indent=2, default=str) if sidecar is not None else None
    data, disk_affine = to_disk_order(vol.astype(dtype, copy=False), a)
    img = nib.Nifti1Image(np.ascontiguousarray(data), disk_affine)
    img.set_sform(disk_affine, code=1)
    img.set_qform(disk_affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    tmp = write_temp(path, lambda t: nib.save(img, t))
    if side is None:
        return publish(tmp, path, overwrite)
    try:
        side_tmp = write_temp(side, lambda t: Path(t).write_text(text))
    except BaseException:
        os.unlink(tmp)
        raise
    return publish_pair(tmp, path, side_tmp, side, overwrite)
