"""Voxel-to-world geometry shared by the DICOM and NIfTI modules.

One array convention everywhere in ``medrecon.datasets``: a volume is ``[slices, rows, cols]``
(index ``(k, r, c)``), i.e. DICOM pixel arrays stacked along the slice normal.  An *affine* is a
4x4 matrix mapping ``(k, r, c, 1)`` to millimetres::

    world(k, r, c) = IPP_0 + k * slice_step + r * PixelSpacing[0] * col_cosine
                                            + c * PixelSpacing[1] * row_cosine

where ``row_cosine = IOP[:3]`` (direction of increasing column index), ``col_cosine = IOP[3:]``.
DICOM patient coordinates are LPS; NIfTI world coordinates are RAS: the two differ by negating x
and y (``LPS_TO_RAS``).  Slices are ordered by increasing position along the DICOM slice normal
``cross(row_cosine, col_cosine)``.  NIfTI files on disk keep the usual ``(x=col, y=row, z=slice)``
order; ``medrecon.datasets.nifti`` transposes on read/write (`to_disk_order`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["LPS_TO_RAS", "lps_to_ras", "ras_to_lps", "dicom_affine", "affine_to_dicom",
           "voxel_to_world", "slice_normal", "to_disk_order", "from_disk_order"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine) -> np.ndarray:
    """DICOM (LPS) affine -> NIfTI (RAS) affine for the same voxel indices."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


ras_to_lps = lps_to_ras  # the flip is its own inverse


def slice_normal(orientation) -> np.ndarray:
    """Unit normal ``cross(row_cosine, col_cosine)`` of an ImageOrientationPatient 6-vector."""
    o = np.asarray(orientation, dtype=float).reshape(2, 3)
    n = np.cross(o[0], o[1])
    return n / np.linalg.norm(n)


def dicom_affine(orientation, pixel_spacing, first_position, slice_step) -> np.ndarray:
    """LPS affine for ``[slices, rows, cols]`` indices.  ``slice_step`` is the 3-vector between
    consecutive slice origins (or a scalar spacing along the slice normal)."""
    o = np.asarray(orientation, dtype=float).reshape(2, 3)
    step = np.asarray(slice_step, dtype=float)
    if step.ndim == 0:
        step = float(step) * slice_normal(orientation)
    a = np.eye(4)
    a[:3, 0] = step
    a[:3, 1] = o[1] * float(pixel_spacing[0])
    a[:3, 2] = o[0] * float(pixel_spacing[1])
    a[:3, 3] = np.asarray(first_position, dtype=float)
    return a


def affine_to_dicom(affine, n_slices: int) -> dict:
    """Inverse of `dicom_affine` for an LPS affine: ImageOrientationPatient (6), PixelSpacing
    (row, col), ImagePositionPatient per slice ``[n_slices, 3]`` and the slice spacing (mm)."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    dr, dc = np.linalg.norm(a[:3, 1]), np.linalg.norm(a[:3, 2])
    ds = np.linalg.norm(a[:3, 0])
    if min(dr, dc, ds) <= 0:
        raise ValueError("affine has a zero-length axis")
    col_cos, row_cos = a[:3, 1] / dr, a[:3, 2] / dc
    if abs(np.dot(col_cos, row_cos)) > 1e-4:
        raise ValueError("affine row and column axes are not orthogonal; DICOM cannot store it")
    if n_slices > 1 and abs(np.dot(a[:3, 0], np.cross(row_cos, col_cos))) < 1e-6 * ds:
        raise ValueError("affine slice axis lies in the image plane; slices would coincide")
    positions = a[:3, 3] + np.arange(n_slices)[:, None] * a[:3, 0]
    return {"orientation": np.concatenate([row_cos, col_cos]), "pixel_spacing": (dr, dc),
            "positions": positions, "slice_spacing": ds}


def voxel_to_world(affine, index) -> np.ndarray:
    """World coordinates of voxel index/indices ``(k, r, c)`` (shape ``[..., 3]``)."""
    idx = np.asarray(index, dtype=float)
    a = np.asarray(affine, dtype=float)
    return idx @ a[:3, :3].T + a[:3, 3]


_PERM = np.eye(4)[:, [2, 1, 0, 3]]  # swaps index axes 0 and 2


def to_disk_order(volume, affine):
    """``[slices, rows, cols]`` (or ``[t, slices, rows, cols]``) + affine -> NIfTI
    ``(x=col, y=row, z=slice[, t])`` array + affine: all axes reversed, index columns swapped."""
    return np.asarray(volume).T, np.asarray(affine, dtype=float) @ _PERM


def from_disk_order(data, affine):
    """NIfTI ``(x, y, z)`` array + affine -> ``[slices, rows, cols]`` + affine (involution)."""
    return to_disk_order(data, affine)
