"""The one output writer of ``medrecon recon`` / ``batch`` / ``compare``, and where outputs go.

`write_output` writes a reconstruction with its record's metadata (`medrecon.pipeline`'s record)
in the format of its extension (`output_format`): ``.h5`` the fastMRI submission file (dataset
``reconstruction``) with the metadata (and the LPS affine, ``affine_lps``) as HDF5 attrs,
``.nii``/``.nii.gz`` NIfTI with a JSON sidecar, a folder a DICOM series (SeriesDescription
``"medrecon <method>"``, DerivationDescription with the options, NFE, time, seed and mask).  A CT
record (``"units": "HU"``) adds its units and geometry to the metadata and is written as a CT
series in HU (rounded, clipped at -1024, soft-tissue window; DerivationDescription ``"medrecon
<method> (HU) {...}"`` with the dose simulation).  Metadata name the input by its file name only;
every write is atomic and no-clobber (`medrecon.datasets.publish`).

`output_target` / `output_name` place one output per input for a command's ``--out`` /
``--format``; `check_writable` refuses, before any work, what would be overwritten.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.datasets.fastmri import ISMRMRDHeader, atomic_h5
from medrecon.datasets.publish import printable

__all__ = ["OUTPUT_FORMATS", "write_output", "output_format", "output_name", "output_target",
           "check_writable", "output_paths", "input_paths", "recon_affine"]

OUTPUT_FORMATS = ("h5", "nifti", "dicom")


def check_writable(out, fmt: str, overwrite: bool) -> None:
    """Before any work: refuse (FileExistsError) an existing output -- an .h5 file, a NIfTI file
    or its JSON sidecar, a non-empty DICOM folder -- unless ``overwrite``; whatever ``overwrite``
    says, a file where a DICOM folder goes, a folder where a file goes, and a DICOM folder
    holding another series.  Then probe that the folder receiving the output takes new files
    (`medrecon.datasets.publish.probe_writable`)."""
    from medrecon.datasets.publish import OutputExistsError, probe_writable

    p = Path(out)
    if fmt == "dicom":
        if os.path.lexists(p) and not p.is_dir():
            raise FileExistsError(f"{printable(p)} is a file, not a DICOM series folder")
        if p.is_dir() and any(p.iterdir()):
            if not overwrite:
                raise OutputExistsError(f"{printable(p)} exists and is not empty; pass "
                                        "overwrite=True (--overwrite) to replace its series")
            from medrecon.datasets.dicom.writer import _series_files
            _series_files(p)  # another series there is refused even with overwrite
        probe_writable(p if p.is_dir() else _existing(p.parent))
        return
    if p.is_dir():
        raise IsADirectoryError(f"{printable(p)} is a folder; the {fmt} output is a file")
    if not overwrite:
        for q in output_paths(p, fmt):
            if os.path.lexists(q):
                raise OutputExistsError(f"{printable(q)} exists; pass overwrite=True "
                                        "(--overwrite) to replace it")
    probe_writable(_existing(p.parent))


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing ancestor (where creating ``folder`` needs write
    permission)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def output_paths(out, fmt: str) -> list[Path]:
    """The paths writing ``out`` in ``fmt`` creates: the file (and a NIfTI file's JSON sidecar),
    or the DICOM series folder."""
    p = Path(out)
    if fmt == "nifti":
        from medrecon.datasets.nifti import sidecar_path
        return [p, sidecar_path(p)]
    return [p]


def input_paths(src) -> list[Path]:
    """The paths an input consists of: the file or series folder (and a NIfTI file's sidecar,
    read as its metadata)."""
    p = Path(src)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from medrecon.datasets.nifti import sidecar_path
        return [p, sidecar_path(p)]
    return [p]


_INPUT_SUFFIXES = (".nii.gz", ".nii", ".hdf5", ".h5", ".npz", ".npy", ".dcm")
_OUT_EXT = {".h5": "h5", ".nii": "nifti", ".nii.gz": "nifti"}


def output_name(src: Path, fmt: str) -> str:
    """The output name of input ``src`` in ``fmt``: its name without the volume suffix, plus
    ``.h5`` / ``.nii.gz``, or bare (a DICOM series folder)."""
    name = src.name
    stem = next((name[: -len(e)] for e in _INPUT_SUFFIXES if name.lower().endswith(e)), name)
    return {"h5": stem + ".h5", "nifti": stem + ".nii.gz", "dicom": stem}[fmt]


def output_target(out, src: Path, n_inputs: int, fmt: str | None,
                  default: str = "h5") -> tuple[Path | None, str]:
    """(output path, format) of input ``src`` for a command's ``--out``/``--format``: a file whose
    extension sets the format (one input only), the folder itself as the DICOM series of a single
    input, or ``out/<output_name>`` in ``fmt`` (else ``default``).  Contradictions are ValueErrors."""
    if out is None:
        return None, fmt or default
    o = Path(out)
    ext_fmt = None if o.is_dir() else next((f for e, f in _OUT_EXT.items() if o.name.endswith(e)), None)
    if ext_fmt is not None:
        if fmt is not None and fmt != ext_fmt:
            raise ValueError(f"--format {fmt} contradicts the extension of --out {o}")
        if n_inputs > 1:
            raise ValueError(f"--out {o} is a file but {n_inputs} inputs were given: pass a folder")
        return o, ext_fmt
    fmt = fmt or default
    if fmt == "dicom" and n_inputs == 1:
        return o, fmt
    return o / output_name(src, fmt), fmt


def output_format(out, fmt: str | None = None) -> str:
    """``fmt`` if given, else from ``out``: ``.nii``/``.nii.gz`` -> nifti, a string ending in
    ``/`` -> dicom, anything else -> h5 (fastMRI submission file)."""
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, "
                             f"got {fmt!r}")
        return fmt
    name = str(out)
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(("/", "\\")):
        return "dicom"
    return "h5"


def recon_affine(header: ISMRMRDHeader | None, recon_size: tuple[int, int], first: int = 0,
                 num_slices: int = 1) -> np.ndarray:
    """LPS affine (`medrecon.datasets.geometry`) of recon slices ``first, first+1, ...``: pixel
    spacing = recon FOV / recon matrix (x: rows, y: columns), slice spacing = z FOV / z matrix
    (the slice thickness of 2-D scans), axial, volume centred at the origin.  Without a header:
    1 mm voxels.  (fastMRI files hold no patient orientation.)"""
    from medrecon.datasets.geometry import dicom_affine

    if header is None:
        sp = (1.0, 1.0, 1.0)
    else:
        sp = tuple(fov / max(n, 1) for fov, n in zip(header.recon_fov_mm, header.recon_shape))
    R, C = recon_size
    origin = (-(C - 1) / 2 * sp[1], -(R - 1) / 2 * sp[0], (first - (num_slices - 1) / 2) * sp[2])
    return dicom_affine((1, 0, 0, 0, 1, 0), (sp[0], sp[1]), origin, sp[2])


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "options", "nfe", "seconds", "seed", "mask", "file", "slices",
            "input_format", "simulation", "prior", "medrecon_version")
    meta = {"software": "medrecon", **{k: record.get(k) for k in keys}}
    if record.get("units") == "HU":  # a CT record
        meta.update(units="HU", geometry=record.get("geometry"))
    if meta["file"] is not None:  # the input's file name only, never its folders
        meta["file"] = printable(Path(meta["file"]).name)
    return meta


def write_output(out, pred: np.ndarray, record: dict[str, Any], affine: np.ndarray,
                 fmt: str | None = None, overwrite: bool = False, *,
                 reference=None, keep_phi: bool = False) -> Path:
    """Write magnitudes ``pred`` ``[slices, rx, ry]`` (HU for a CT record) with the record's
    metadata (module doc).

    ``affine``: LPS for ``(k, r, c)``.  ``reference``: the source `DicomSeries` of exactly these
    slices (a DICOM input); a DICOM output then keeps its geometry, and its patient/study
    identifiers (citing the source images) only with ``keep_phi`` (else it is de-identified,
    `medrecon.datasets.dicom.write_dicom_series`).  HDF5 outputs store the
    affine as the ``affine_lps`` attr (JSON).  Metadata name the input by its file name only.
    """
    from medrecon.datasets.geometry import lps_to_ras

    fmt = output_format(out, fmt)
    meta = _metadata(record)
    if not np.isfinite(pred).all():
        raise ValueError("reconstruction contains NaN or Inf")
    if fmt == "nifti":
        from medrecon.datasets.nifti import write_nifti
        return write_nifti(pred, out, lps_to_ras(affine), overwrite=overwrite, sidecar=meta)
    if fmt == "dicom":
        from medrecon.datasets.dicom import write_dicom_series
        keys = ("options", "nfe", "seconds", "seed", "mask", "slices", "prior", "medrecon_version")
        ct = meta.get("units") == "HU"
        params = json.dumps({k: meta[k] for k in keys + (("simulation",) if ct else ())})
        geometry = {"affine": affine} if reference is None else {"reference": reference}
        method = record["method"]
        if ct:  # a CT series in HU, with a soft-tissue window
            return write_dicom_series(np.rint(pred).clip(-1024, None), out, modality="CT",
                                      anonymize=not keep_phi,
                                      series_description=f"medrecon {method}",
                                      derivation_description=f"medrecon {method} (HU) {params}",
                                      window=(40.0, 400.0), overwrite=overwrite, **geometry)
        return write_dicom_series(pred, out, modality="MR", anonymize=not keep_phi,
                                  series_description=f"medrecon {method}",
                                  derivation_description=f"medrecon {method} {params}",
                                  overwrite=overwrite, **geometry)
    with atomic_h5(out, overwrite) as f:  # fastMRI submission format + metadata attrs
        f.create_dataset("reconstruction", data=pred.astype(np.float32))
        for key, val in {**meta, "affine_lps": np.asarray(affine).tolist()}.items():
            if val is not None:
                f.attrs[key] = json.dumps(val) if isinstance(val, (dict, list)) else val
    return Path(out)
