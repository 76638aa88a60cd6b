"""Running the rows of ``medrecon bench recon``: every entry through ``medrecon.reconstruct`` on every
test slice, scored with ``medrecon.metrics.evaluate`` (fastMRI conventions)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from medrecon.bench.recon.rows import Entry, Row, make_test_mask
from medrecon.datasets.fastmri import center_crop
from medrecon.metrics import evaluate
from medrecon.reconstruct import reconstruct
from medrecon.registry import get_method

__all__ = ["run_entry", "warm_up", "run_rows"]


def run_entry(entry: Entry, mask_name: str, data: list[dict], sample_seed: int = 0,
              device: str | None = None) -> tuple[Row, Optional[np.ndarray]]:
    """Run one entry on every slice with mask ``mask_name``: its Row and the first slice's magnitude."""
    spec = get_method(entry.method)
    preds, secs, nfe, used = [], [], None, dict(entry.options)
    dev = torch.device(device) if device else torch.device("cpu")
    options = dict(entry.options, **({"cache": entry.deepcache} if entry.deepcache > 1 else {}))
    try:
        for d in data:
            k = d["kspace"].to(dev)
            m = make_test_mask(mask_name, tuple(k.shape[-2:]), d["seed"]).to(dev)
            res = reconstruct(k, m, entry.method, seed=sample_seed, **options)
            preds.append(center_crop(res.magnitude, tuple(d["target"].shape)).detach().cpu().float().numpy())
            secs.append(res.seconds)
            nfe, used = res.nfe, res.options
        metrics = evaluate(np.stack([d["target"].numpy() for d in data]), np.stack(preds))  # NaN -> ValueError
    except Exception as exc:  # a failing row is recorded and the bench goes on
        status = "n/a" if isinstance(exc, ValueError) and str(exc).startswith("mask") else "error"
        note = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return Row(mask_name, entry.method, entry.solver, entry.deepcache, None, None, None, None, None,
                   len(data), used, spec.kind, status, note), None
    return Row(mask_name, entry.method, entry.solver, entry.deepcache, nfe, metrics["psnr"], metrics["ssim"],
               metrics["nmse"], float(np.mean(secs)), len(data), used, spec.kind), preds[0]


def warm_up(entries: list[Entry], mask_name: str, d: dict, device: str | None = None) -> None:
    """One untimed call per diffusion method with its step counts set to 1, so that one-off costs
    (lazy imports, first-call kernel set-up, loading the prior) are not charged to its first row."""
    dev = torch.device(device) if device else torch.device("cpu")
    k = d["kspace"].to(dev)
    m = make_test_mask(mask_name, tuple(k.shape[-2:]), d["seed"]).to(dev)
    for method in dict.fromkeys(e.method for e in entries if get_method(e.method).kind == "diffusion"):
        e = next(e for e in entries if e.method == method)
        fields = {f.name for f in dataclasses.fields(get_method(method).options)}
        opts = {**e.options, **{f: 1 for f in ("steps", "refine_steps", "adapt_iters") if f in fields}}
        try:
            reconstruct(k, m, method, seed=0, **opts)
        except Exception:  # noqa: BLE001 -- the timed rows report any error
            pass


def run_rows(entries: list[Entry], masks: list[str], data: list[dict], sample_seed: int = 0,
             device: str | None = None, on_row=None) -> tuple[list[Row], dict]:
    """Every (mask, entry), mask-major, after `warm_up`; ``on_row(row, index, total)`` after each.
    Returns the rows and ``{row index: first-slice magnitude}``."""
    if masks and data:
        warm_up(entries, masks[0], data[0], device)
    rows, images = [], {}
    total = len(masks) * len(entries)
    for mask in masks:
        for e in entries:
            row, img = run_entry(e, mask, data, sample_seed, device)
            rows.append(row)
            if img is not None:
                images[len(rows) - 1] = img
            if on_row is not None:
                on_row(row, len(rows), total)
    return rows, images
