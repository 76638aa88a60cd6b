"""`medrecon info`: what a file holds.

    medrecon info FILE [FILE ...] [--json]

Recognised: fastMRI HDF5 (k-space, header, mask, targets), ISMRMRD HDF5 and Siemens twix ``.dat``
raw data (header summary, acquisition counts, the k-space medrecon reads, or why it is not
supported), simulated CT HDF5
(`medrecon.datasets.simulate_ct` layout), reconstructions written by ``medrecon recon`` (.h5),
DICOM (a file or a folder holding one series; non-uniform slice spacing is described in
``irregular_spacing``, not refused) and NIfTI (.nii/.nii.gz, with its JSON sidecar).
With ``--json`` one JSON object per file is printed (key ``format``: ``fastmri``, ``ismrmrd``,
``twix``, ``ct-sim``, ``reconstruction``, ``dicom`` or ``nifti``).  A file that cannot be read is reported on stderr,
the others are still described, and the exit code is 1.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe fastMRI/ISMRMRD/CT HDF5, twix, DICOM and "
                                          "NIfTI files")
    p.add_argument("files", nargs="+", help="files (DICOM: a file or a series folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=run)


def _jsonable(v: Any) -> Any:
    """JSON-able copy; a non-finite float (an HDF5 attribute of NaN) becomes the string
    ``"nan"``/``"inf"``/``"-inf"``: strict JSON has no NaN, and the file does hold that value."""
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    if isinstance(v, np.floating) and not np.isfinite(v):
        return str(float(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        if v.size > 64:  # a large array attribute: its summary, not its values
            return f"<array {v.dtype} {list(v.shape)}>"
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def _maybe_json(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            pass
    return v


def _attrs(h5obj) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in h5obj.attrs.items()}


def _fastmri(path: Path) -> dict[str, Any]:
    from medrecon.datasets.fastmri import FastMRIFile

    with FastMRIFile(path) as f:
        mask, hdr, attrs = f.mask, f.header, _attrs(f._h5)
        acc = attrs.get("acceleration")
        if acc is None and mask is not None:
            acc = round(mask.size / max(int(mask.sum()), 1), 3)
        return {
            "format": "fastmri", "kind": "multicoil" if f.is_multicoil else "singlecoil",
            "slices": f.num_slices, "coils": f.shape[1] if f.is_multicoil else 1,
            "kspace_shape": list(f.shape), "kspace_dtype": str(f.kspace.dtype),
            "recon_size": list(f.recon_size),
            "recon_fov_mm": list(hdr.recon_fov_mm) if hdr else None,
            "encoded_fov_mm": list(hdr.encoded_fov_mm) if hdr else None,
            "has_header": hdr is not None, "has_mask": mask is not None,
            "acceleration": acc,
            "targets": [k for k in ("reconstruction_rss", "reconstruction_esc") if k in f._h5],
            "attrs": attrs,
        }


def _hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file: {exc}") from None
    with h5:
        keys = sorted(h5.keys())
        if "kspace" in keys:
            pass  # described by FastMRIFile below, after closing this handle
        elif "image_hu" in keys:
            attrs = _attrs(h5)
            angles = np.asarray(attrs.pop("angles_deg", []), dtype=float)
            img, sino = h5["image_hu"], h5.get("sinogram")
            return {
                "format": "ct-sim", "slices": img.shape[0], "image_shape": list(img.shape),
                "sinogram_shape": list(sino.shape) if sino is not None else None,
                "datasets": keys, "n_angles": int(angles.size),
                "angles_deg": [float(angles.min()), float(angles.max())] if angles.size else None,
                "attrs": attrs,
            }
        elif "reconstruction" in keys:
            r = h5["reconstruction"]
            attrs = {k: _maybe_json(v) for k, v in _attrs(h5).items()}  # medrecon metadata
            return {"format": "reconstruction", "slices": r.shape[0], "shape": list(r.shape),
                    "dtype": str(r.dtype), "attrs": attrs}
        else:
            raise ValueError(f"{path}: HDF5 file is neither fastMRI (kspace), simulated CT "
                             f"(image_hu) nor a reconstruction; datasets: {keys or 'none'}")
    return _fastmri(path)


def _nifti(path: Path) -> dict[str, Any]:
    from medrecon.datasets.nifti import read_nifti, sidecar_path

    nv = read_nifti(path)
    h = nv.header
    return {"format": "nifti", "shape": list(nv.volume.shape), "disk_shape": list(h["disk_shape"]),
            "spacing_mm": [float(z) for z in h["zooms"]], "dtype": h["dtype"],
            "affine": _jsonable(h["disk_affine"]), "units": list(h["units"]),
            "sidecar_file": str(sidecar_path(path)) if h["sidecar"] is not None else None,
            "sidecar": _jsonable(h["sidecar"])}


def _dicom(path: Path) -> dict[str, Any]:
    from medrecon.datasets.dicom import read_dicom_series

    with warnings.catch_warnings(record=True) as caught:  # describe, do not refuse, a gap
        warnings.simplefilter("always")
        s = read_dicom_series(path, allow_irregular_spacing=True)
    irregular = [str(w.message) for w in caught if "non-uniform slice spacing" in str(w.message)]
    g = s.header.get
    return {"format": "dicom", "modality": s.modality, "series_uid": s.series_uid,
            "series_description": str(g("SeriesDescription", "")),
            "derivation_description": str(g("DerivationDescription", "")),
            "shape": list(s.volume.shape), "pixel_spacing": [float(x) for x in s.pixel_spacing],
            "slice_spacing": float(s.slice_spacing),
            "slice_thickness": None if s.slice_thickness is None else float(s.slice_thickness),
            "orientation": [float(x) for x in s.orientation], "files": len(s.files),
            "irregular_spacing": irregular[0] if irregular else None}


def describe(path) -> dict[str, Any]:
    """A JSON-able description of ``path`` (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    try:
        info = _describe(p)
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{p}: corrupt file ({type(exc).__name__}: {exc})") from None
    return {"file": str(p), **_jsonable(info)}


def _describe(p: Path) -> dict[str, Any]:
    import h5py

    if p.is_dir():
        info = _dicom(p)
    elif p.name.endswith((".nii", ".nii.gz")):
        info = _nifti(p)
    elif h5py.is_hdf5(p):
        from medrecon.datasets.ismrmrd import describe_ismrmrd, is_ismrmrd

        info = describe_ismrmrd(p) if is_ismrmrd(p) else _hdf5(p)
    elif p.name.lower().endswith(".dat"):
        from medrecon.datasets.twix import describe_twix

        info = describe_twix(p)
    else:
        try:
            info = _dicom(p)
        except ValueError as exc:
            if "not a DICOM file" not in str(exc):
                raise
            raise ValueError(f"{p}: unknown format (expected fastMRI/ISMRMRD/CT HDF5, twix .dat, "
                             "DICOM or NIfTI .nii/.nii.gz)") from None
    return info


def _text(info: dict[str, Any]) -> str:
    lines = [f"{info['file']}: {info['format']}"]
    for k, v in info.items():
        if k not in ("file", "format"):
            lines.append(f"  {k + ':':<22} "
                         f"{v if isinstance(v, str) else json.dumps(v, allow_nan=False)}")
    return "\n".join(lines)


def run(args) -> int:
    failed = 0
    for item in args.files:
        try:
            info = describe(item)
        except (ValueError, OSError, KeyError) as exc:
            failed += 1
            print(f"medrecon info: error: {exc}", file=sys.stderr)
            continue
        print(json.dumps(info, allow_nan=False) if args.json else _text(info), flush=True)
    return 1 if failed else 0
