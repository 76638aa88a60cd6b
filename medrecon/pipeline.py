"""``reconstruct_file``: a whole fastMRI-format volume through one method, slice by slice.

This is what ``medrecon recon`` runs for each input file; notebooks and pipelines call it
directly and get the same record the CLI prints with ``--json``:

``{"file", "method", "options", "nfe", "seconds", "seconds_per_slice", "slices", "shape",
"recon_size", "mask", "seed", "output", "metrics"}`` where ``mask`` is ``"file"`` (the file's own
mask: test/challenge data) or ``{"kind", "acceleration", "center_fraction", "seed",
"sampled_fraction"}`` (retrospective undersampling), ``nfe`` is network evaluations per slice,
``seconds`` the reconstruction time of the volume (sensitivity estimation included, file I/O
excluded), and ``metrics`` = ``{"nmse", "psnr", "ssim"}`` against the fully sampled RSS image
at the recon matrix (fastMRI conventions) when the input was fully sampled, else ``null``;
``seed`` is the sampling seed of diffusion methods (``null``: the method's default).

``out`` is written in the format of its extension (`output_format`): ``.h5`` the fastMRI
submission file with the record's metadata as HDF5 attrs, ``.nii``/``.nii.gz`` NIfTI with the
affine of the ISMRMRD recon FOV/matrix and a JSON sidecar, a folder (``out_format="dicom"`` or a
path string ending in ``/``) a DICOM MR series (SeriesDescription ``"medrecon <method>"``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medrecon.datasets.fastmri import FastMRIFile, ISMRMRDHeader, atomic_h5, center_crop
from medrecon.metrics import evaluate
from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import make_mask
from medrecon.reconstruct import reconstruct

__all__ = ["MaskSpec", "reconstruct_file", "parse_slices", "output_format", "recon_affine",
           "write_output", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("h5", "nifti", "dicom")


@dataclass(frozen=True)
class MaskSpec:
    """Retrospective undersampling: a `medrecon.physics.masks.make_mask` call."""

    kind: str = "equispaced_fraction"
    acceleration: float = 4
    center_fraction: float = 0.08
    seed: int | None = 0


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


def reconstruct_file(path, method: str = "cg-sense", mask: MaskSpec | None = None,
                     slices: str | None = None, out=None, overwrite: bool = False,
                     progress: bool = False, device: str | None = None,
                     seed: int | None = None, out_format: str | None = None,
                     batch_size: int = 1, **options) -> dict[str, Any]:
    """Reconstruct the selected slices of a fastMRI file; write ``out`` if given.

    ``seed`` seeds the sampler of each call (diffusion methods); ``batch_size`` slices are
    reconstructed per call (stochastic methods then draw different noise than one by one);
    ``out_format`` overrides the format inferred from ``out`` (one of `OUTPUT_FORMATS`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask = mask or MaskSpec()
    fmt = output_format(out, out_format) if out is not None else None
    with FastMRIFile(path) as f:
        rows = parse_slices(slices, f.num_slices)
        H, W = f.shape[-2:]
        own = f.mask
        if own is not None:
            m = torch.from_numpy(own).view(1, W)
            mask_info: Any = "file"
        else:
            m = make_mask(mask.kind, (H, W), mask.acceleration, mask.center_fraction,
                          seed=mask.seed)
            mask_info = {"kind": mask.kind, "acceleration": mask.acceleration,
                         "center_fraction": mask.center_fraction, "seed": mask.seed,
                         "sampled_fraction": float(m.float().mean())}
        crop = f.recon_size
        preds, refs, seconds, nfe, used = [], [], 0.0, 0, {}
        bar = tqdm(total=len(rows), desc=f"{Path(path).name} [{method}]", disable=not progress,
                   unit="slice", leave=False)
        for j in range(0, len(rows), batch_size):
            batch = rows[j:j + batch_size]
            k = torch.stack([f.read_slice(i)["kspace"] for i in batch])  # [B, (C,) H, W]
            if not f.is_multicoil:
                k = k.unsqueeze(1)
            if batch_size == 1:
                k = k[0]
            if device:
                k = k.to(device)
            res = reconstruct(k, m.to(k.device), method, seed=seed, **options)
            seconds += res.seconds
            nfe = res.nfe
            used = res.options
            preds.extend(center_crop(res.magnitude, crop).cpu().numpy().reshape(-1, *crop))
            if own is None:  # fully sampled input: the reference is its RSS image
                refs.extend(center_crop(rss(ifft2c(k)), crop).cpu().numpy().reshape(-1, *crop))
            bar.update(len(batch))
        bar.close()
        pred = np.stack(preds).astype(np.float32)
        metrics = evaluate(np.stack(refs), pred) if refs else None
        record = {
            "file": str(path), "method": method, "options": used, "nfe": nfe,
            "seconds": round(seconds, 4), "seconds_per_slice": round(seconds / len(rows), 4),
            "slices": [rows.start, rows.stop], "shape": list(f.shape),
            "recon_size": list(crop), "mask": mask_info, "seed": seed, "output": None,
            "metrics": metrics,
        }
        affine = recon_affine(f.header, crop, rows.start, f.num_slices)
    if out is not None:
        record["output"] = str(write_output(out, pred, record, affine, fmt, overwrite))
    return record


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
    keys = ("method", "options", "nfe", "seconds", "seed", "mask", "file", "slices")
    return {"software": "medrecon", **{k: record[k] for k in keys}}


def write_output(out, pred: np.ndarray, record: dict[str, Any], affine: np.ndarray,
                 fmt: str | None = None, overwrite: bool = False) -> Path:
    """Write magnitudes ``pred`` ``[slices, rx, ry]`` with the record's metadata (module doc)."""
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
        params = json.dumps({k: meta[k] for k in ("options", "nfe", "seed", "mask")})
        return write_dicom_series(pred, out, affine=affine, modality="MR", anonymize=True,
                                  series_description=f"medrecon {record['method']}",
                                  derivation_description=f"medrecon {record['method']} {params}",
                                  overwrite=overwrite)
    with atomic_h5(out, overwrite) as f:  # fastMRI submission format + metadata attrs
        f.create_dataset("reconstruction", data=pred.astype(np.float32))
        for key, val in meta.items():
            if val is not None:
                f.attrs[key] = json.dumps(val) if isinstance(val, (dict, list)) else val
    return Path(out)
