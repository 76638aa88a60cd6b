"""Image-domain recon inputs (DICOM MR series, NIfTI volumes): retrospective k-space simulation.

A DICOM or NIfTI file holds reconstructed magnitude images, not k-space, so ``medrecon recon``
reconstructs them *retrospectively*, the usual simulation protocol of the MRI reconstruction
literature on image data (e.g. Chung & Ye, MedIA 2022, Sec. 4; Jalal et al., NeurIPS 2021):

1. each slice ``v`` ``[H, W]`` is a complex image ``x = v`` with zero phase (real-valued);
2. ``coils = 1`` (default): single-coil k-space ``y = F x`` with ``F`` = `fft2c`, sensitivity
   ``s = 1``;  ``coils = C > 1``: ``y_c = F (s_c x)`` with the deterministic birdcage maps of
   `medrecon.datasets.simulate_mri.coil_maps` (``sum_c |s_c|^2 = 1``, so the coil-combined image
   ``S^H S x`` is ``x`` again).  The maps used are *passed* to the method (``smaps=``): the
   sensitivities are known exactly, as in every simulation from images, so the comparison
   measures the reconstruction, not the ESPIRiT calibration;
3. ``y`` is undersampled with the chosen mask (`medrecon.physics.masks.make_mask`) along the
   phase-encoding direction -- the DICOM ``InPlanePhaseEncodingDirection`` when present
   (``COL``: the slice is transposed so that the mask selects rows), else columns, as in
   fastMRI (k-space ``[readout, phase encode]``);
4. the reconstruction magnitude is scored against ``|v|`` with the fastMRI metrics.

No noise is added: the input image is the ground truth and its own noise stays in it.  Volumes
are ``[slices, rows, cols]`` with an LPS ``affine`` for ``(k, r, c)``
(`medrecon.datasets.geometry`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medrecon.inputs import INPUT_KINDS, input_kind
from medrecon.physics.fft import fft2c

__all__ = ["ImageVolume", "input_kind", "read_image_volume", "simulate_kspace",
           "slab_affine", "slab_series", "INPUT_KINDS"]


@dataclass
class ImageVolume:
    """A magnitude volume read from DICOM or NIfTI, with what is needed to write it back."""

    volume: np.ndarray          # float32 [slices, rows, cols]
    affine: np.ndarray          # LPS 4x4 for (k, r, c)
    kind: str                   # "dicom" or "nifti"
    phase_encoding: str = "columns"  # axis the mask undersamples: "columns" or "rows"
    series: object = None       # the DicomSeries of a DICOM input (header, exact positions)

    def slab_affine(self, first: int) -> np.ndarray:
        """LPS affine of the slices from ``first`` on (a DICOM slice's exact position)."""
        a = slab_affine(self.affine, first)
        if self.series is not None:
            a[:3, 3] = self.series.slice_positions[first]
        return a


def read_image_volume(path, allow_irregular_spacing: bool = False) -> ImageVolume:
    """Read a DICOM MR series (folder or file) or a 2-D/3-D NIfTI file as an `ImageVolume`.

    ValueError naming ``path`` on degenerate data: NaN/Inf, an all-zero volume (nothing to
    reconstruct), slices under 8x8, and -- DICOM -- an unreadable or pixel-less slice or
    non-uniform slice spacing (unless ``allow_irregular_spacing``)."""
    from medrecon.datasets.geometry import ras_to_lps

    path = Path(path)
    kind = input_kind(path)
    if kind == "nifti":
        from medrecon.datasets.nifti import read_nifti

        nv = read_nifti(path)
        if nv.volume.ndim != 3:
            raise ValueError(f"{path}: 4-D NIfTI ({nv.header['disk_shape']}) is not supported; "
                             "pass one 3-D volume (split the time/echo axis first)")
        vol, affine, series, pe = nv.volume, ras_to_lps(nv.affine), None, "columns"
    elif kind == "dicom":
        from medrecon.datasets.dicom import read_dicom_series

        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        series = read_dicom_series(path, allow_irregular_spacing=allow_irregular_spacing)
        if series.modality not in ("MR", ""):
            raise ValueError(f"{path}: DICOM Modality is {series.modality!r}; MRI recon needs "
                             "an MR series (CT series go to the CT methods, e.g. --method fbp)")
        vol, affine = series.volume, series.affine
        pe = "rows" if str(series.header.get("InPlanePhaseEncodingDirection", "")) == "COL" \
            else "columns"
    else:
        raise ValueError(f"{path}: a fastMRI file has k-space; read it with FastMRIFile")
    if not np.isfinite(vol).all():
        raise ValueError(f"{path}: image contains NaN or Inf")
    if not vol.any():
        raise ValueError(f"{path}: image is all zero; there is nothing to reconstruct")
    if min(vol.shape[-2:]) < 8:
        raise ValueError(f"{path}: slices of {vol.shape[-2:]} pixels; at least 8x8 expected")
    return ImageVolume(np.ascontiguousarray(vol, np.float32), np.asarray(affine, float), kind,
                       pe, series)


def simulate_kspace(images: torch.Tensor, coils: int = 1,
                    phase_encoding: str = "columns") -> tuple[torch.Tensor, torch.Tensor]:
    """Real images ``[B, H, W]`` -> (k-space ``[B, C, H', W']``, maps ``[C, H', W']``), complex64;
    ``phase_encoding="rows"`` transposes each slice first (H' = W).  See the module docstring."""
    from medrecon.datasets.simulate_mri import coil_maps

    if not isinstance(coils, (int, np.integer)) or isinstance(coils, bool) or coils < 1:
        raise ValueError(f"coils must be an int >= 1, got {coils!r}")
    if phase_encoding not in ("columns", "rows"):
        raise ValueError(f"phase_encoding must be 'columns' or 'rows', got {phase_encoding!r}")
    x = images.to(torch.complex64)
    if phase_encoding == "rows":
        x = x.transpose(-2, -1)
    H, W = x.shape[-2:]
    if coils == 1:
        smaps = torch.ones(1, H, W, dtype=torch.complex64, device=x.device)
    else:
        smaps = torch.from_numpy(coil_maps(int(coils), (H, W))).to(x.device)
    return fft2c(smaps * x.unsqueeze(-3)), smaps


def slab_affine(affine, first: int) -> np.ndarray:
    """The affine of the sub-volume starting at slice ``first`` (same axes, shifted origin)."""
    a = np.array(affine, dtype=float)
    a[:3, 3] = a[:3, 3] + first * a[:3, 0]
    return a


def slab_series(series, rows: range):
    """The `DicomSeries` restricted to slices ``rows`` (exact positions and source references
    kept), so a derived series of those slices cites and overlays its source images."""
    idx = list(rows)
    return dataclasses.replace(
        series, volume=series.volume[idx], slice_positions=series.slice_positions[idx],
        source_refs=[series.source_refs[i] for i in idx] if series.source_refs else [],
        affine=_at(slab_affine(series.affine, rows.start), series.slice_positions[rows.start]))


def _at(affine: np.ndarray, origin) -> np.ndarray:
    affine[:3, 3] = origin
    return affine
