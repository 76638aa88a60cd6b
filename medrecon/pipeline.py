"""``reconstruct_file``: a whole fastMRI-format volume through one method, slice by slice.

This is what ``medrecon recon`` runs for each input file; notebooks and pipelines call it
directly and get the same record the CLI prints with ``--json``:

``{"file", "method", "options", "nfe", "seconds", "seconds_per_slice", "slices", "shape",
"recon_size", "mask", "output", "metrics"}`` where ``mask`` is ``"file"`` (the file's own
mask: test/challenge data) or ``{"kind", "acceleration", "center_fraction", "seed",
"sampled_fraction"}`` (retrospective undersampling), ``nfe`` is network evaluations per slice,
``seconds`` the reconstruction time of the volume (sensitivity estimation included, file I/O
excluded), and ``metrics`` = ``{"nmse", "psnr", "ssim"}`` against the fully sampled RSS image
at the recon matrix (fastMRI conventions) when the input was fully sampled, else ``null``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medrecon.datasets.fastmri import FastMRIFile, center_crop, write_reconstruction
from medrecon.metrics import evaluate
from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import make_mask
from medrecon.reconstruct import reconstruct

__all__ = ["MaskSpec", "reconstruct_file", "parse_slices"]


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
                     **options) -> dict[str, Any]:
    """Reconstruct the selected slices of a fastMRI file; write ``out`` if given."""
    mask = mask or MaskSpec()
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
        for i in tqdm(rows, desc=f"{Path(path).name} [{method}]", disable=not progress,
                      unit="slice", leave=False):
            k = f.read_slice(i)["kspace"]
            if not f.is_multicoil:
                k = k.unsqueeze(0)
            if device:
                k = k.to(device)
            res = reconstruct(k, m.to(k.device), method, **options)
            seconds += res.seconds
            nfe = res.nfe
            used = res.options
            preds.append(center_crop(res.magnitude, crop).cpu().numpy())
            if own is None:  # fully sampled input: the reference is its RSS image
                refs.append(center_crop(rss(ifft2c(k)), crop).cpu().numpy())
        pred = np.stack(preds).astype(np.float32)
        metrics = evaluate(np.stack(refs), pred) if refs else None
        record = {
            "file": str(path), "method": method, "options": used, "nfe": nfe,
            "seconds": round(seconds, 4), "seconds_per_slice": round(seconds / len(rows), 4),
            "slices": [rows.start, rows.stop], "shape": list(f.shape),
            "recon_size": list(crop), "mask": mask_info, "output": None, "metrics": metrics,
        }
    if out is not None:
        record["output"] = str(write_reconstruction(out, pred, overwrite=overwrite))
    return record
