"""What a reconstruction input is: the files a folder holds (`find_inputs`), their kind, slices.

`find_inputs` is the one reader of input folders, for ``medrecon recon DIR`` and ``medrecon
batch DIR`` alike.  A path given as a file is taken as it is (a missing one too: it fails as an
input, with the reader's error).  A folder contributes, sorted by name, hidden entries skipped:

- every volume file inside: fastMRI / ISMRMRD / sinogram HDF5 (``.h5``, ``.hdf5``), Siemens twix
  raw data (``.dat``), NIfTI (``.nii``, ``.nii.gz``) and sinogram arrays (``.npz``, ``.npy``);
- every sub-folder, one DICOM series each (MR or CT);
- when it holds neither but holds files, the folder itself: one DICOM series (its ``.dcm`` or
  extension-less slice files).

A folder with nothing of these (empty, or only hidden entries) is a ValueError naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["find_inputs", "input_kind", "open_kspace", "parse_slices", "INPUT_KINDS",
           "KSPACE_KINDS", "VOLUME_SUFFIXES"]

INPUT_KINDS = ("fastmri", "ismrmrd", "twix", "dicom", "nifti")
KSPACE_KINDS = ("fastmri", "ismrmrd", "twix")  # raw k-space inputs (`open_kspace`)
VOLUME_SUFFIXES = (".h5", ".hdf5", ".dat", ".nii", ".nii.gz", ".npz", ".npy")


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
            raise ValueError(f"{p}: folder contains no volume files (.h5/.hdf5/.dat/.nii/"
                             ".nii.gz/.npz/.npy), DICOM series folders or DICOM files")
    if not files:
        raise ValueError("no inputs given")
    return files


def input_kind(path) -> str:
    """``"ismrmrd"`` (an HDF5 file holding an ISMRMRD dataset group, sniffed), ``"fastmri"``
    (another ``.h5``), ``"twix"`` (``.dat``, Siemens raw data), ``"nifti"`` (``.nii``/``.nii.gz``)
    or ``"dicom"`` (a series folder or any other file: read as DICOM, which says clearly when it
    is not)."""
    name = Path(path).name.lower()
    if name.endswith((".h5", ".hdf5")):
        from medrecon.datasets.ismrmrd import is_ismrmrd

        if Path(path).is_file() and is_ismrmrd(path):
            return "ismrmrd"
        if name.endswith(".h5"):
            return "fastmri"
    if name.endswith(".dat"):
        return "twix"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "dicom"


def open_kspace(path):
    """The k-space reader of a `KSPACE_KINDS` input: `FastMRIFile`, or a
    `medrecon.datasets.raw_kspace.RawKSpaceFile` (ISMRMRD, twix) with the same interface; use
    it as a context manager."""
    kind = input_kind(path)
    if kind == "ismrmrd":
        from medrecon.datasets.ismrmrd import open_ismrmrd

        return open_ismrmrd(path)
    if kind == "twix":
        from medrecon.datasets.twix import open_twix

        return open_twix(path)
    from medrecon.datasets.fastmri import FastMRIFile

    return FastMRIFile(path)


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
