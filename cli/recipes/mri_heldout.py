"""Held-out loss of an MRI prior per recon matrix size: the check behind docs/priors.md.

The held-out images are the multi-scale recipe's (``mri_scales.simulate_scale``: 8-16 coils, SNR
30, 2x readout oversampling, ESPIRiT-combined, normalised by the zero-filled maximum) from
simulator seeds >= 1000, which no training set uses.  The loss is the training loss evaluated on
the *whole* encoded field of view (2 s x s: what the posterior methods give the prior at
inference), at ``LEVELS`` fixed noise levels with one fixed noise draw per (image, level), so
two checkpoints are compared on identical inputs:

- VP eps prior: ||eps(x_t, t) - z||^2 at timesteps t = 50, 150, ..., 950 (of 1000);
- HFS prior: ``medrecon.models.hfs_process.hfs_loss``'s integrand |P_H(std s(x_t) + z)|^2 at
  t = 0.05, 0.15, ..., 0.95 of the HFS-SDE.

Usage::

    python -m medrecon.cli.recipes.mri_heldout runs/prior2/old/brain128-vp runs/.../step-00001500 \\
        --sizes 128 256 320 384 --cache runs/prior2/heldout.pt
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["LEVELS", "heldout_images", "heldout_loss", "main"]

LEVELS = 10


def heldout_images(size: int, volumes: int = 2, slices: int = 2, seed: int = 1000) -> torch.Tensor:
    """Normalised held-out images ``[volumes * slices, 2 size, size]`` (simulator ``seed`` >= 1000)."""
    from .mri_normalize import normalize_images
    from .mri_scales import simulate_scale

    if seed < 1000:
        raise ValueError(f"seed: held-out sets use simulator seeds >= 1000 (0..999 train), got {seed}")
    return normalize_images(simulate_scale(size, volumes, slices, seed), seed)


def _generator(seed: int, image: int, level: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(image), int(level)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


@torch.no_grad()
def heldout_loss(checkpoint: str | os.PathLike, images: torch.Tensor, seed: int = 0) -> float:
    """Mean loss of ``checkpoint`` (VP eps or HFS prior, by its config) over ``images`` [N, H, W] and
    the ``LEVELS`` fixed noise levels (module docstring)."""
    from medrecon.models.checkpoint import load_checkpoint, load_model
    from medrecon.models.hfs_process import HFSSDE, hfs_score_fn

    extra = load_checkpoint(checkpoint).extra
    model = load_model(checkpoint, use_ema=True)
    model.net.eval()
    hfs = HFSSDE.from_dict(extra["hfs"]) if extra.get("objective") == "hfs" else None
    if hfs is None and model.prediction_type != "eps":
        raise ValueError(f"checkpoint {checkpoint}: expected a VP eps or an HFS prior, got a "
                         f"{model.prediction_type!r} model with objective {extra.get('objective')!r}")
    score_fn = hfs_score_fn(model) if hfs is not None else None
    total = 0.0
    for n, x0 in enumerate(images.to(torch.complex64)):
        x0 = x0[None]
        for k in range(LEVELS):
            z = torch.randn(x0.shape, generator=_generator(seed, n, k), dtype=x0.dtype)
            if hfs is not None:
                t = torch.tensor([(k + 0.5) / LEVELS], dtype=torch.float64)
                mean, std = hfs.marginal(x0, t)
                s = score_fn(mean + std * hfs.high_pass(z), hfs.std(t).to(torch.float32))
                d = hfs.high_pass(std * s + z)
            else:
                n_t = len(model.schedule.alphas_cumprod)
                t = torch.tensor([(k + 0.5) * n_t / LEVELS], dtype=torch.float32)
                a, s = model._coeffs(t, x0.ndim, torch.float32)
                d = model.raw(a * x0 + s * z, t) - z
            total += float(torch.view_as_real(d).float().pow(2).mean())
    return total / (len(images) * LEVELS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (or builtin prior names)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 320, 384])
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--seed", type=int, default=1000, help="simulator seed of the held-out set (>= 1000)")
    p.add_argument("--cache", default=None, help="file keeping the held-out images between runs")
    args = p.parse_args(argv)
    from medrecon.builtin_priors import resolve_checkpoint

    key = f"{args.seed}-{args.volumes}-{args.slices}"
    cache = torch.load(args.cache, weights_only=True) if args.cache and Path(args.cache).is_file() else {}
    for size in args.sizes:
        if f"{key}-{size}" not in cache:
            cache[f"{key}-{size}"] = heldout_images(size, args.volumes, args.slices, args.seed)
            if args.cache:
                torch.save(cache, args.cache)
    print("checkpoint | " + " | ".join(f"{s}x{s}" for s in args.sizes), flush=True)
    for ck in args.checkpoints:
        path = resolve_checkpoint(ck, "")
        losses = [heldout_loss(path, cache[f"{key}-{s}"]) for s in args.sizes]
        print(f"{ck} | " + " | ".join(f"{v:.5f}" for v in losses), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
