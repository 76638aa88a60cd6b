"""What a reconstruction input is: the files a folder holds (`find_inputs`), their kind, slices.

`find_inputs` is the one reader of input folders, for ``medrecon recon DIR`` and ``medrecon
batch DIR`` alike.  A path given as a file is taken as it is (a missing one too: it fails as an
input, with the reader's error).  A folder contributes, sorted by name, hidden entries skipped:

- every volume file inside: fastMRI / sinogram HDF5 (``.h5``, ``.hdf5``), NIfTI (``.nii``,
  ``.nii.gz``) and sinogram arrays (``.npz``, ``.npy``);
- every sub-folder, one DICOM series each (MR or CT);
- when it holds neither but holds files, the folder itself: one DICOM series (its ``.dcm`` or
  extension-less slice files).

A folder with nothing of these (empty, or only hidden entries) is a ValueError naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["find_inputs", "input_kind", "parse_slices", "INPUT_KINDS", "VOLUME_SUFFIXES"]

INPUT_KINDS = ("fastmri", "dicom", "nifti")
VOLUME_SUFFIXES = (".h5", ".hdf5", ".nii", ".nii.gz", ".npz", ".npy")


def find_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """The inputs named by ``inputs`` (paths; a folder is read as the module doc says)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            files.append(p)
            continue
        entries = sorted(q for q in p.iterdir() if not q.name.startswith("."))
        found = [q for q in entries if q.is_dir() or (
            q.is_file() and q.name.lower().endswith(VOLUME_SUFFIXES))]
        if found:
            files += found
        elif any(q.is_file() for q in entries):
            files.append(p)  # a DICOM series folder
        else:
            raise ValueError(f"{p}: folder contains no volume files (.h5/.hdf5/.nii/.nii.gz/"
                             ".npz/.npy), DICOM series folders or DICOM files")
    if not files:
        raise ValueError("no inputs given")
    return files


def input_kind(path) -> str:
    """``"fastmri"`` (``.h5``), ``"nifti"`` (``.nii``/``.nii.gz``) or ``"dicom"`` (a series folder
    or any other file: read as DICOM, which says clearly when it is not)."""
    name = Path(path).name.lower()
    if name.endswith(".h5"):
        return "fastmri"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "dicom"


def parse_slices(spec: str | None, n: int) -> range:
    """``"a:b"`` / ``"a"`` / None -> a range of slice indices, checked against ``n`` slices."""
    if spec is None or spec == "":
        return range(n)
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            r = range(*slice(int(a) if a else None, int(b) if b else None).indices(n))
        else:
            i = int(spec)
            r = range(i, i + 1)
    except ValueError:
        raise ValueError(f"slices must look like 'a:b' or 'i', got {spec!r}") from None
    if len(r) == 0 or r.start >= n or r.stop > n:
        raise ValueError(f"slices {spec!r} select nothing in a volume of {n} slices")
    return r
