"""fastMRI HDF5 files: lazy slice reader, schema writer, submission writer, ISMRMRD header.

The schema is the one of the public fastMRI files (Zbontar et al., 2018):

- ``kspace``: complex64 ``[slices, coils, H, W]`` (multi-coil) or ``[slices, H, W]`` (single-coil),
  H = readout (oversampled 2x), W = phase encode;
- ``ismrmrd_header``: the ISMRMRD XML (encoded / recon matrix and FOV, encoding limits);
- ``reconstruction_rss`` (multi-coil) / ``reconstruction_esc`` (single-coil): float32 targets
  ``[slices, rx, ry]`` at the recon matrix;
- ``mask``: ``[W]`` in test/challenge files, absent in train/val files;
- attrs ``acquisition``, ``max``, ``norm``, ``patient_id`` (and ``acceleration``,
  ``num_low_frequency`` in test files).

Reading never loads a whole volume to get one slice (h5py datasets are sliced lazily).  Writers
go to a temporary file in the target folder published by `medrecon.datasets.publish` (no-clobber
against other processes; an existing file is replaced only with ``overwrite=True``).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from medrecon.datasets.limits import check_h5_dataset
from medrecon.datasets.publish import OutputExistsError, printable, publish, temp_path

__all__ = ["ISMRMRDHeader", "FastMRIFile", "make_ismrmrd_header", "parse_ismrmrd_header",
           "write_fastmri", "write_reconstruction", "center_crop", "atomic_h5"]

NS = "http://www.ismrm.org/ISMRMRD"
GAMMA_BAR_HZ_PER_T = 42.577478518e6  # proton gyromagnetic ratio / 2 pi (CODATA 2018)


@dataclass(frozen=True)
class ISMRMRDHeader:
    """What fastMRI reads from the header (``mri_data.py::_retrieve_metadata``)."""

    encoded_shape: tuple[int, int, int]
    recon_shape: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    enc_limits_center: int
    enc_limits_max: int  # inclusive maximum of kspace_encoding_step_1, as stored

    @property
    def padding_left(self) -> int:
        return self.encoded_shape[1] // 2 - self.enc_limits_center

    @property
    def padding_right(self) -> int:
        return self.padding_left + self.enc_limits_max + 1

    @property
    def recon_size(self) -> tuple[int, int]:
        return (self.recon_shape[0], self.recon_shape[1])


def make_ismrmrd_header(encoded_shape, recon_shape, encoded_fov_mm=(240.0, 240.0, 3.0),
                        recon_fov_mm=None, enc_limits_center=None, enc_limits_max=None,
                        field_strength_t: float = 3.0, system_model: str = "medrecon-sim") -> str:
    """ISMRMRD XML with the fields fastMRI reads.  Shapes are (x=readout, y=phase, z).

    Valid against the ISMRMRD schema (ismrmrd.xsd: the required ``experimentalConditions``,
    elements in schema order), so ISMRMRD-aware readers (``ismrmrd.xsd.CreateFromDocument``,
    mrpro) accept the files we write; the proton frequency is gamma-bar * B0."""
    ex, ey, ez = (list(encoded_shape) + [1])[:3]
    rx, ry, rz = (list(recon_shape) + [1])[:3]
    efov = (list(encoded_fov_mm) + [3.0])[:3]
    rfov = efov if recon_fov_mm is None else (list(recon_fov_mm) + [3.0])[:3]
    center = ey // 2 if enc_limits_center is None else int(enc_limits_center)
    maximum = ey - 1 if enc_limits_max is None else int(enc_limits_max)

    def vec(tag, vals, fmt):
        return "".join(f"<{a}>{fmt(v)}</{a}>" for a, v in zip("xyz", vals)).join(
            (f"<{tag}>", f"</{tag}>"))

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{NS}">'
        f"<acquisitionSystemInformation><systemModel>{system_model}</systemModel>"
        f"<systemFieldStrength_T>{field_strength_t}</systemFieldStrength_T>"
        "</acquisitionSystemInformation>"
        "<experimentalConditions><H1resonanceFrequency_Hz>"
        f"{round(GAMMA_BAR_HZ_PER_T * field_strength_t)}"
        "</H1resonanceFrequency_Hz></experimentalConditions>"
        "<encoding>"
        f"<encodedSpace>{vec('matrixSize', (ex, ey, ez), int)}"
        f"{vec('fieldOfView_mm', efov, float)}</encodedSpace>"
        f"<reconSpace>{vec('matrixSize', (rx, ry, rz), int)}"
        f"{vec('fieldOfView_mm', rfov, float)}</reconSpace>"
        "<encodingLimits><kspace_encoding_step_1>"
        f"<minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>"
        "</kspace_encoding_step_1></encodingLimits>"
        "<trajectory>cartesian</trajectory>"
        "</encoding></ismrmrdHeader>"
    )


def parse_ismrmrd_header(xml: str | bytes, source: str = "ismrmrd_header") -> ISMRMRDHeader:
    """Parse the fields of `ISMRMRDHeader` (ValueError naming ``source`` if absent)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: ismrmrd_header is not valid XML ({exc})") from None

    def q(*path) -> str:
        node = root.find("/".join(f"ns:{p}" for p in path), {"ns": NS})
        if node is None or node.text is None:
            raise ValueError(f"{source}: ismrmrd_header lacks {'/'.join(path)}")
        return node.text

    def triple(space, what, typ):
        return tuple(typ(q("encoding", space, what, a)) for a in "xyz")

    return ISMRMRDHeader(
        encoded_shape=triple("encodedSpace", "matrixSize", int),
        recon_shape=triple("reconSpace", "matrixSize", int),
        encoded_fov_mm=triple("encodedSpace", "fieldOfView_mm", float),
        recon_fov_mm=triple("reconSpace", "fieldOfView_mm", float),
        enc_limits_center=int(q("encoding", "encodingLimits", "kspace_encoding_step_1", "center")),
        enc_limits_max=int(q("encoding", "encodingLimits", "kspace_encoding_step_1", "maximum")),
    )


def center_crop(x, shape: tuple[int, int]):
    """Crop the last two dims to ``shape`` exactly as ``fastmri.data.transforms.center_crop``."""
    h, w = x.shape[-2:]
    if not (0 < shape[0] <= h and 0 < shape[1] <= w):
        raise ValueError(f"crop shape {tuple(shape)} must fit in the image size {(h, w)}")
    h0, w0 = (h - shape[0]) // 2, (w - shape[1]) // 2
    return x[..., h0:h0 + shape[0], w0:w0 + shape[1]]


class FastMRIFile:
    """Lazy reader of one fastMRI HDF5 file; use as a context manager or call ``close()``."""

    input_format = "fastmri"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except Exception as exc:  # h5py: OSError, sometimes others on corrupt superblocks
            raise ValueError(f"{self.path}: not a readable HDF5 file (truncated or corrupt?): "
                             f"{exc}") from None
        try:
            self._validate()
        except ValueError:
            self._h5.close()
            raise
        except (OSError, KeyError, RuntimeError, TypeError, IndexError) as exc:  # h5py on corrupt
            self._h5.close()                                                # object headers
            raise ValueError(f"{self.path}: corrupt fastMRI HDF5 file ({type(exc).__name__}: "
                             f"{exc})") from None

    def _validate(self) -> None:
        if "kspace" not in self._h5:
            raise ValueError(f"{self.path}: missing 'kspace' dataset (keys: "
                             f"{', '.join(self._h5.keys()) or 'none'})")
        k = self._h5["kspace"]
        if not isinstance(k, h5py.Dataset):
            raise ValueError(f"{self.path}: 'kspace' is an HDF5 group, not a dataset")
        if k.ndim not in (3, 4) or 0 in k.shape:
            raise ValueError(f"{self.path}: kspace must be [slices, coils, H, W] or "
                             f"[slices, H, W] with no empty axis, got shape {k.shape}")
        if not np.issubdtype(k.dtype, np.complexfloating):
            raise ValueError(f"{self.path}: kspace must be complex, got dtype {k.dtype}")
        check_h5_dataset(k, self.path, "kspace", nbytes=self._slice_bytes())
        H, W = k.shape[-2:]
        hdr = self.header
        if hdr is not None and (hdr.encoded_shape[0], hdr.encoded_shape[1]) != (H, W):
            raise ValueError(f"{self.path}: header encoded matrix {hdr.encoded_shape[:2]} does not "
                             f"match the k-space size {(H, W)}")
        if hdr is not None and min(hdr.recon_shape[:2]) < 1:
            raise ValueError(f"{self.path}: header recon matrix {hdr.recon_shape[:2]} must be "
                             "positive")
        if "mask" in self._h5:
            m = self._h5["mask"]
            if (not isinstance(m, h5py.Dataset) or m.ndim != 1 or m.shape[0] != W
                    or not (m.dtype == bool or np.issubdtype(m.dtype, np.number))
                    or np.issubdtype(m.dtype, np.complexfloating)):
                raise ValueError(f"{self.path}: mask must be a real 1-D dataset of length W={W} "
                                 f"(the k-space width), got {getattr(m, 'dtype', 'a group')} "
                                 f"{getattr(m, 'shape', '')}")
            check_h5_dataset(m, self.path, "mask")
            if not self.mask.any():
                raise ValueError(f"{self.path}: mask selects no k-space line (all zero); "
                                 "nothing was measured")

    def _slice_bytes(self) -> int:
        """Bytes of one slice as read (complex64 after conversion, at least the stored size)."""
        k = self._h5["kspace"]
        return int(np.prod(k.shape[1:], dtype=np.int64)) * max(8, k.dtype.itemsize)

    # -- metadata -------------------------------------------------------------------------
    @property
    def kspace(self) -> h5py.Dataset:
        return self._h5["kspace"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kspace.shape)

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    @property
    def is_multicoil(self) -> bool:
        return self.kspace.ndim == 4

    @property
    def mask(self) -> np.ndarray | None:
        return np.asarray(self._h5["mask"][()]).astype(bool) if "mask" in self._h5 else None

    @property
    def header(self) -> ISMRMRDHeader | None:
        if "ismrmrd_header" not in self._h5:
            return None
        d = self._h5["ismrmrd_header"]
        if not isinstance(d, h5py.Dataset) or d.shape != () or d.dtype.kind not in "SOU":
            raise ValueError(f"{self.path}: ismrmrd_header must be one XML string, got "
                             f"{getattr(d, 'dtype', 'a group')} {getattr(d, 'shape', '')}")
        check_h5_dataset(d, self.path, "ismrmrd_header")
        xml = d[()]
        try:
            return parse_ismrmrd_header(xml.encode() if isinstance(xml, str) else xml,
                                        str(self.path))
        except (ValueError, TypeError) as exc:  # e.g. int("abc") of a matrix size
            msg = str(exc)
            raise ValueError(msg if str(self.path) in msg else
                             f"{self.path}: bad ismrmrd_header ({msg})") from None

    @property
    def recon_size(self) -> tuple[int, int]:
        """Recon matrix from the header (fastMRI's 320x320), bounded by the k-space size."""
        hdr = self.header
        H, W = self.shape[-2:]
        if hdr is None:
            return (H, W)
        return (min(hdr.recon_shape[0], H), min(hdr.recon_shape[1], W))

    @property
    def attrs(self) -> dict[str, Any]:
        out = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v)
               for k, v in self._h5.attrs.items()}
        hdr = self.header
        if hdr is not None:
            out.setdefault("padding_left", hdr.padding_left)
            out.setdefault("padding_right", hdr.padding_right)
        return out

    def target(self, kind: str = "rss") -> h5py.Dataset | None:
        """The ``reconstruction_<kind>`` dataset ``[slices, rx, ry]`` (None if absent)."""
        if kind not in ("rss", "esc"):
            raise ValueError(f"target kind must be 'rss' or 'esc', got {kind!r}")
        t = self._h5.get(f"reconstruction_{kind}")
        if t is not None and (not isinstance(t, h5py.Dataset) or t.ndim != 3
                              or t.shape[0] != self.num_slices or t.dtype.kind not in "fiu"):
            raise ValueError(f"{self.path}: reconstruction_{kind} must be a real [slices="
                             f"{self.num_slices}, rx, ry] dataset, got {getattr(t, 'dtype', 'a group')} "
                             f"{getattr(t, 'shape', '')}")
        return t

    # -- data -----------------------------------------------------------------------------
    def read_slice(self, i: int) -> dict[str, Any]:
        """One slice: k-space as torch.complex64 ([C, H, W] or [H, W]), mask, target, metadata."""
        if not -self.num_slices <= i < self.num_slices:
            raise ValueError(f"{self.path}: slice {i} out of range [0, {self.num_slices})")
        tgt = self.target("rss" if self.is_multicoil else "esc")
        try:
            k = torch.from_numpy(np.asarray(self.kspace[i]).astype(np.complex64))
            if tgt is not None:
                check_h5_dataset(tgt, self.path, tgt.name.lstrip("/"),
                                 nbytes=int(np.prod(tgt.shape[1:])) * tgt.dtype.itemsize)
                tgt = np.asarray(tgt[i])
        except (OSError, RuntimeError, KeyError, TypeError, IndexError) as exc:  # h5py on bad data
            raise ValueError(f"{self.path}: cannot read slice {i} ({type(exc).__name__}: "
                             f"{exc})") from None
        return {
            "kspace": k,
            "mask": self.mask,
            "target": tgt,
            "metadata": {"file": str(self.path), "slice": i % self.num_slices,
                         "recon_size": self.recon_size, **self.attrs},
        }

    def close(self) -> None:
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class atomic_h5:
    """Context manager giving an h5py.File at a temp path, published to ``path`` on success
    (`medrecon.datasets.publish`: no-clobber unless ``overwrite``; the temp is removed on error).
    """

    def __init__(self, path, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        if os.path.lexists(self.path) and not overwrite:
            raise OutputExistsError(f"{printable(self.path)} exists; pass overwrite=True "
                                    "(--overwrite) to replace it")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{printable(self.path.parent)}: output folder does not exist")

    def __enter__(self) -> h5py.File:
        self._tmp = temp_path(self.path)
        self._h5 = h5py.File(self._tmp, "x")
        return self._h5

    def __exit__(self, exc_type, exc, tb):
        try:
            self._h5.close()
        finally:
            if exc_type is None:
                publish(self._tmp, self.path, self.overwrite)
            elif os.path.lexists(self._tmp):
                os.unlink(self._tmp)
        return False


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_fastmri(path, kspace, *, header: str | None = None, reconstruction_rss=None,
                  reconstruction_esc=None, mask=None, attrs: dict | None = None,
                  recon_shape=None, encoded_fov_mm=(240.0, 240.0, 3.0),
                  overwrite: bool = False) -> Path:
    """Write a fastMRI-schema file.  Without ``header`` one is built from the shapes
    (recon matrix = ``recon_shape`` or the target's size, else half the readout, fastMRI-like)."""
    k = _np(kspace)
    if k.ndim not in (3, 4) or not np.iscomplexobj(k):
        raise ValueError(f"kspace must be complex [slices, coils, H, W] or [slices, H, W], got "
                         f"{k.dtype} {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError("kspace contains NaN or Inf")
    H, W = k.shape[-2:]
    target = reconstruction_rss if reconstruction_rss is not None else reconstruction_esc
    if header is None:
        if recon_shape is None:
            recon_shape = _np(target).shape[-2:] if target is not None else (H // 2, W)
        header = make_ismrmrd_header((H, W, 1), (*recon_shape, 1), encoded_fov_mm)
    else:
        hdr = parse_ismrmrd_header(header)
        if hdr.encoded_shape[:2] != (H, W):
            raise ValueError(f"header encoded matrix {hdr.encoded_shape[:2]} does not match the "
                             f"k-space size {(H, W)}")
    if mask is not None and _np(mask).reshape(-1).shape[0] != W:
        raise ValueError(f"mask must have length W={W}, got shape {_np(mask).shape}")
    with atomic_h5(path, overwrite) as f:
        f.create_dataset("kspace", data=k.astype(np.complex64),
                         chunks=(1,) + k.shape[1:])
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        for name, tgt in (("reconstruction_rss", reconstruction_rss),
                          ("reconstruction_esc", reconstruction_esc)):
            if tgt is not None:
                t = _np(tgt).astype(np.float32)
                if t.shape[0] != k.shape[0]:
                    raise ValueError(f"{name} has {t.shape[0]} slices, kspace {k.shape[0]}")
                f.create_dataset(name, data=t)
        if mask is not None:
            f.create_dataset("mask", data=_np(mask).reshape(-1).astype(bool))
        base = {"acquisition": "AXT2" if k.ndim == 4 else "CORPD_FBK", "patient_id": ""}
        if target is not None:
            t = _np(target)
            base.update(max=float(t.max()), norm=float(np.linalg.norm(t)))
        for key, val in {**base, **(attrs or {})}.items():
            f.attrs[key] = val
    return Path(path)


def write_reconstruction(path, recon, overwrite: bool = False) -> Path:
    """fastMRI submission format: a float32 ``reconstruction`` dataset ``[slices, rx, ry]``."""
    r = _np(recon)
    if np.iscomplexobj(r):
        r = np.abs(r)
    if r.ndim != 3:
        raise ValueError(f"recon must be [slices, rx, ry], got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("recon contains NaN or Inf")
    with atomic_h5(path, overwrite) as f:
        f.create_dataset("reconstruction", data=r.astype(np.float32))
    return Path(path)
