"""Cartesian 2-D multi-slice raw k-space from line-by-line acquisitions (ISMRMRD, Siemens twix).

A raw reader (`medrecon.datasets.ismrmrd`, `medrecon.datasets.twix`) lists the readouts it keeps
as a `LineTable` and loads their samples on demand; `RawKSpaceFile` turns them into the
per-slice k-space ``[C, H, W]`` (H = readout, W = phase encode) that `FastMRIFile` gives, with the
same interface (``num_slices``, ``shape``, ``mask``, ``recon_size``, ``header``, ``read_slice``),
so the reconstruction pipeline reads every format alike.  Per slice:

1. noise pre-whitening when the file holds a noise scan: ``y <- L^{-1} y * sqrt(2 * s)`` with
   ``L L^H`` the noise covariance and ``s`` = (acquisition dwell / noise dwell) x relative receiver
   noise bandwidth (ismrmrd-python-tools ``ismrmrdtools/coils.py:9-38`` calculate_prewhitening /
   apply_prewhitening, its scale factor as in ``recon_multi_reps.py:119-121``; Gadgetron's
   NoiseAdjustGadget does the same);
2. each readout placed so that its centre sample lands at H_enc // 2 (discarded samples and a
   partial echo stay zero) and each line so that the k-space centre line lands at W // 2;
3. readout oversampling removed to the recon matrix: inverse FFT along the readout, central
   crop to the recon x size, FFT back (``recon_ismrmrd_dataset.py:77-86``; orthonormal centered
   FFTs, so the image values of the kept FOV are unchanged).

The mask is the set of acquired lines (parallel-calibration lines included); it must be the same
in every slice.  A fully sampled scan has no mask (``mask is None``): it is then undersampled
retrospectively like a fastMRI train file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medrecon.datasets.fastmri import ISMRMRDHeader

__all__ = ["Encoding", "LineTable", "RawKSpaceFile", "prewhitening_matrix", "apply_prewhitening",
           "refuse_extra_dimensions"]


@dataclass(frozen=True)
class Encoding:
    """The encoding that the kept readouts share: matrices (x=readout, y=phase), FOVs (mm),
    the k-space centre line of the phase axis and the relative receiver noise bandwidth."""

    encoded: tuple[int, int]
    recon: tuple[int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    center_line: int
    receiver_bandwidth: float = 1.0


@dataclass
class LineTable:
    """One row per kept readout: its slice, phase-encode line (as stored, not yet centred),
    sample layout and the key ``load`` reads it by; ``calibration_only`` marks lines acquired
    only for parallel-imaging calibration (used where no imaging line covers the position)."""

    slice: np.ndarray
    line: np.ndarray
    key: np.ndarray
    samples: np.ndarray
    center_sample: np.ndarray
    discard_pre: np.ndarray
    discard_post: np.ndarray
    calibration_only: np.ndarray


def prewhitening_matrix(noise: np.ndarray, scale_factor: float = 1.0) -> np.ndarray:
    """``[C, C]`` whitening matrix of noise samples ``[C, N]``: ``inv(chol(cov)) * sqrt(2 s)``
    (ismrmrdtools/coils.py:9-26; cov with the 1/(N-1) estimate).  Whitened noise has covariance
    ``2 s I``: real and imaginary parts of unit variance when ``s = 1``."""
    noise = np.asarray(noise).reshape(noise.shape[0], -1).astype(np.complex128)
    n = noise.shape[1]
    cov = noise @ noise.conj().T / (n - 1)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(f"noise scan covariance ({noise.shape[0]} channels, {n} samples) is not "
                         "positive definite; a channel is silent or duplicated") from None
    return np.linalg.inv(chol) * np.sqrt(2.0) * np.sqrt(scale_factor)


def apply_prewhitening(data: np.ndarray, dmtx: np.ndarray) -> np.ndarray:
    """``dmtx @ data`` over the leading coil axis of ``data [C, ...]`` (coils.py:28-38)."""
    s = data.shape
    return (dmtx @ data.reshape(s[0], -1)).reshape(s).astype(data.dtype)


def refuse_extra_dimensions(source: str, counters: dict[str, np.ndarray]) -> None:
    """ValueError when a counter (``"contrast (idx.contrast)" -> values``) takes more than one
    value: one 2-D Cartesian image per slice is what medrecon reconstructs."""
    for name, values in counters.items():
        vals = np.unique(np.asarray(values))
        if vals.size > 1:
            shown = ", ".join(str(int(v)) for v in vals[:8]) + (", ..." if vals.size > 8 else "")
            raise ValueError(f"{source}: {vals.size} {name} ({shown}) are not supported; "
                             "medrecon reconstructs one 2-D image per slice: extract one first")


def _ifft1c(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(x, dim=-2), dim=-2, norm="ortho"),
                              dim=-2)


def _fft1c(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(x, dim=-2), dim=-2, norm="ortho"),
                              dim=-2)


class RawKSpaceFile:
    """`FastMRIFile`'s reading interface over raw readouts (module doc).  ``load(keys)`` returns
    the samples ``[n, C, Ns]`` of those readouts; ``noise`` ``[C, N]`` (or None) with
    ``noise_scale`` its dwell-time ratio; ``summary`` is what ``medrecon info`` shows."""

    is_multicoil = True

    def __init__(self, path, input_format: str, table: LineTable, encoding: Encoding,
                 channels: int, load: Callable[[np.ndarray], np.ndarray],
                 noise: np.ndarray | None = None, noise_scale: float = 1.0,
                 close: Callable[[], None] | None = None, summary: dict | None = None):
        self.path, self.input_format = Path(path), input_format
        self.encoding, self.channels = encoding, int(channels)
        self._load, self._close = load, close
        self.summary = dict(summary or {})
        eNx, eNy = encoding.encoded
        self._cols = table.line.astype(np.int64) - encoding.center_line + eNy // 2
        bad = (self._cols < 0) | (self._cols >= eNy)
        if bad.any():
            raise ValueError(f"{self.path}: phase-encoding line {int(table.line[bad][0])} lies "
                             f"outside the encoded matrix of {eNy} lines (centre line "
                             f"{encoding.center_line})")
        self._table = table
        self._slices = np.unique(table.slice)
        self._rows = [self._pick(s) for s in self._slices]
        self.whitening = None
        if noise is not None:
            if noise.shape[0] != self.channels:
                raise ValueError(f"{self.path}: noise scan has {noise.shape[0]} channels, the "
                                 f"image scan {self.channels}")
            self.whitening = prewhitening_matrix(
                noise, noise_scale * encoding.receiver_bandwidth).astype(np.complex64)
        masks = [np.isin(np.arange(eNy), self._cols[r]) for r in self._rows]
        for s, m in zip(self._slices[1:], masks[1:]):
            if not np.array_equal(m, masks[0]):
                raise ValueError(f"{self.path}: slice {int(s)} acquired other phase-encoding "
                                 f"lines than slice {int(self._slices[0])} ({int(m.sum())} vs "
                                 f"{int(masks[0].sum())}); one mask per volume is supported")
        self._mask = None if masks[0].all() else masks[0]
        self._nx = min(encoding.recon[0], eNx)

    def _pick(self, s) -> np.ndarray:
        """Rows of slice ``s``: one per line, imaging lines before calibration-only ones."""
        t = self._table
        rows = np.flatnonzero(t.slice == s)
        order = np.lexsort((t.calibration_only[rows], self._cols[rows]))
        rows = rows[order]
        cols = self._cols[rows]
        first = np.ones(rows.size, bool)
        first[1:] = cols[1:] != cols[:-1]
        dup = ~first & ~t.calibration_only[rows]
        if dup.any():
            raise ValueError(f"{self.path}: phase-encoding line {int(t.line[rows[dup][0]])} of "
                             f"slice {int(s)} was acquired more than once (averages or "
                             "repetitions without their counter); not supported")
        return rows[first]

    # -- FastMRIFile's interface ---------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        return len(self._slices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_slices, self.channels, self._nx, self.encoding.encoded[1])

    @property
    def mask(self) -> np.ndarray | None:
        return None if self._mask is None else self._mask.copy()

    @property
    def header(self) -> ISMRMRDHeader:
        """The encoding as fastMRI's header (encoded readout after oversampling removal)."""
        e = self.encoding
        cols = np.flatnonzero(self._mask) if self._mask is not None else np.arange(e.encoded[1])
        fx = e.encoded_fov_mm[0] * self._nx / e.encoded[0]
        return ISMRMRDHeader(encoded_shape=(self._nx, e.encoded[1], 1),
                             recon_shape=(e.recon[0], e.recon[1], 1),
                             encoded_fov_mm=(fx, *e.encoded_fov_mm[1:]),
                             recon_fov_mm=e.recon_fov_mm,
                             enc_limits_center=e.encoded[1] // 2 - int(cols[0]),
                             enc_limits_max=int(cols[-1] - cols[0]))

    @property
    def recon_size(self) -> tuple[int, int]:
        return (min(self.encoding.recon[0], self._nx), min(self.encoding.recon[1],
                                                           self.encoding.encoded[1]))

    @property
    def attrs(self) -> dict[str, Any]:
        return {"input_format": self.input_format, "slice_index": self._slices.tolist(),
                "prewhitened": self.whitening is not None}

    def read_slice(self, i: int) -> dict[str, Any]:
        """Slice ``i`` (0-based among the scan's slices): k-space ``[C, H, W]`` complex64."""
        if not -self.num_slices <= i < self.num_slices:
            raise ValueError(f"{self.path}: slice {i} out of range [0, {self.num_slices})")
        rows = self._rows[i]
        t, (eNx, eNy) = self._table, self.encoding.encoded
        data = self._load(t.key[rows])
        k = np.zeros((self.channels, eNx, eNy), np.complex64)
        for j, r in enumerate(rows):
            line = data[j]
            if line.shape != (self.channels, int(t.samples[r])):
                raise ValueError(f"{self.path}: readout {int(t.key[r])} holds {line.shape} "
                                 f"samples, its header says {(self.channels, int(t.samples[r]))}")
            keep = np.arange(int(t.discard_pre[r]), int(t.samples[r]) - int(t.discard_post[r]))
            dest = keep - int(t.center_sample[r]) + eNx // 2
            ok = (dest >= 0) & (dest < eNx)
            k[:, dest[ok], self._cols[r]] = line[:, keep[ok]]
        if self.whitening is not None:
            k = apply_prewhitening(k, self.whitening)
        kt = torch.from_numpy(k)
        if self._nx < eNx:  # readout oversampling removal (module doc, step 3)
            x0 = (eNx - self._nx) // 2
            kt = _fft1c(_ifft1c(kt)[:, x0:x0 + self._nx]).contiguous()
        return {"kspace": kt, "mask": self.mask, "target": None,
                "metadata": {"file": str(self.path), "slice": i % self.num_slices,
                             "recon_size": self.recon_size, **self.attrs}}

    def describe(self) -> dict[str, Any]:
        """What ``medrecon info`` shows: the reader's summary and the k-space it makes."""
        m = self._mask
        return {"format": self.input_format, "supported": True, **self.summary,
                "slices": self.num_slices, "kspace_shape": list(self.shape),
                "recon_size": list(self.recon_size), "has_mask": m is not None,
                "acceleration": round(m.size / max(int(m.sum()), 1), 3) if m is not None else None,
                "prewhitened": self.whitening is not None}

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
