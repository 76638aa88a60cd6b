"""`FastMRISliceDataset`: a PyTorch dataset over every slice of a folder of fastMRI HDF5 files.

Why: training and evaluating reconstructions needs random access to slices of hundreds of
large volumes without loading them, reproducible train/val splits and subsets, and a loader
that survives one corrupt download.

- Construction reads only shapes, the ISMRMRD header and attrs of each file (never k-space).
- Items open their file per call (as fastMRI's ``SliceDataset``), so no h5py handle is ever
  shared with forked DataLoader workers; the dataset pickles as plain metadata.
- ``split="train"|"val"`` splits BY VOLUME: files are ordered by ``sha256(f"{split_seed}:{name}")``
  and the first ``round(n * val_fraction)`` are validation.  The assignment depends only on the
  file names and ``split_seed`` (not on listing order, nor on which files are corrupt).
- ``sample_rate`` keeps that fraction of slices, ``volume_sample_rate`` that fraction of
  volumes (fastMRI's arguments, exclusive), drawn with ``numpy.random.default_rng(split_seed)``.
- A file that cannot be indexed is skipped with a ``UserWarning`` naming it; it is listed with
  the reason in ``dataset.skipped``.

An item (before ``transform``) is a dict: ``kspace`` complex64 ``[C, H, W]`` (``[H, W]``
single-coil), ``target`` float32 ``[rx, ry]`` (``reconstruction_rss``/``_esc``, if present),
``mask`` bool ``[W]`` (test files only) and ``metadata`` (see `SliceInfo.metadata`).
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medrecon.datasets.fastmri import FastMRIFile

__all__ = ["FastMRISliceDataset", "VolumeInfo", "split_volumes", "list_h5_files"]


@dataclass(frozen=True)
class VolumeInfo:
    """What is known of a file without reading its k-space."""

    path: str
    num_slices: int
    shape: tuple[int, ...]
    recon_size: tuple[int, int]
    padding_left: int
    padding_right: int
    max: float
    norm: float
    acquisition: str
    multicoil: bool

    @property
    def fname(self) -> str:
        return Path(self.path).name

    def metadata(self, slice_idx: int) -> dict[str, Any]:
        """Per-item metadata; plain scalars/strings so torch's default collate accepts it."""
        return {"fname": self.fname, "slice": int(slice_idx), "num_slices": self.num_slices,
                "recon_size": self.recon_size, "padding_left": self.padding_left,
                "padding_right": self.padding_right, "max": self.max, "norm": self.norm,
                "acquisition": self.acquisition}


def list_h5_files(root_or_files) -> list[Path]:
    """A folder (its ``*.h5``/``*.hdf5``, sorted), one file, or a sequence of files."""
    if isinstance(root_or_files, (str, os.PathLike)):
        p = Path(root_or_files)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in (".h5", ".hdf5"))
            if not found:
                raise ValueError(f"{p}: folder holds no .h5/.hdf5 files")
            return found
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        return [p]
    return [Path(q) for q in root_or_files]


def split_volumes(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split of volume names; see the module docstring."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    n_val = int(round(len(order) * val_fraction))
    val = set(order[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


def _index_file(path: Path) -> VolumeInfo:
    with FastMRIFile(path) as f:
        a = f.attrs
        W = f.shape[-1]
        return VolumeInfo(
            path=str(path), num_slices=f.num_slices, shape=f.shape, recon_size=f.recon_size,
            padding_left=int(a.get("padding_left", 0)),
            padding_right=int(a.get("padding_right", W)),
            max=float(a.get("max", math.nan)), norm=float(a.get("norm", math.nan)),
            acquisition=str(a.get("acquisition", "")), multicoil=f.is_multicoil)


class FastMRISliceDataset(torch.utils.data.Dataset):
    """Every slice of the fastMRI files in ``root_or_files`` (see the module docstring)."""

    def __init__(self, root_or_files, transform: Callable | None = None, split: str | None = None,
                 val_fraction: float = 0.2, split_seed: int = 0, sample_rate: float = 1.0,
                 volume_sample_rate: float | None = None):
        if split not in (None, "train", "val"):
            raise ValueError(f"split must be None, 'train' or 'val', got {split!r}")
        if volume_sample_rate is not None and sample_rate != 1.0:
            raise ValueError("set either sample_rate (samples slices) or volume_sample_rate "
                             "(samples volumes), not both")
        for name, r in (("sample_rate", sample_rate), ("volume_sample_rate", volume_sample_rate)):
            if r is not None and not 0.0 < r <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {r}")
        self.transform = transform
        files = list_h5_files(root_or_files)
        names = [p.name for p in files]
        if len(set(names)) != len(names):
            raise ValueError("file names must be unique (the split and mask seeds use them)")
        if split is not None:
            train, val = split_volumes(names, val_fraction, split_seed)
            keep = set(train if split == "train" else val)
            files = [p for p in files if p.name in keep]
        rng = np.random.default_rng(split_seed)
        if volume_sample_rate is not None and volume_sample_rate < 1.0:
            n = int(round(len(files) * volume_sample_rate))
            files = [files[i] for i in sorted(rng.permutation(len(files))[:n])]
        self.volumes: list[VolumeInfo] = []
        self.skipped: list[tuple[str, str]] = []
        for p in files:
            try:
                self.volumes.append(_index_file(p))
            except Exception as exc:  # any unreadable file: skip it, keep the rest
                self.skipped.append((str(p), str(exc)))
                warnings.warn(f"skipping {p}: {exc}", UserWarning, stacklevel=2)
        self.samples = [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.num_slices)]
        if sample_rate < 1.0:
            n = int(round(len(self.samples) * sample_rate))
            self.samples = [self.samples[i] for i in sorted(rng.permutation(len(self.samples))[:n])]

    def __len__(self) -> int:
        return len(self.samples)

    def volume_of(self, i: int) -> VolumeInfo:
        return self.volumes[self.samples[i][0]]

    def raw(self, i: int) -> dict[str, Any]:
        """The item before ``transform`` (opens and closes its file)."""
        v, s = self.samples[i]
        vol = self.volumes[v]
        with FastMRIFile(vol.path) as f:
            out: dict[str, Any] = {
                "kspace": torch.from_numpy(np.asarray(f.kspace[s]).astype(np.complex64)),
                "metadata": vol.metadata(s)}
            tgt = f.target("rss" if vol.multicoil else "esc")
            if tgt is not None:
                out["target"] = torch.from_numpy(np.asarray(tgt[s], dtype=np.float32))
            mask = f.mask
            if mask is not None:
                out["mask"] = torch.from_numpy(mask)
                num_low = f.attrs.get("num_low_frequency")
                if num_low is not None:
                    out["metadata"]["num_low_frequencies"] = int(num_low)
        return out

    def __getitem__(self, i: int):
        item = self.raw(i)
        return item if self.transform is None else self.transform(item)
