"""CT reconstruction of one scan: FBP, and the two denoisers on top of it (methods `medrecon.methods.ct`).

- ``fbp``: filtered backprojection of the (low-dose) sinogram with the option ``filter``; fan-beam
  scans shorter than 2 pi use Parker weights.
- ``latent-cold-diffusion``: FBP -> HU / 1000 -> E -> cold sampling (Bansal et al. Algorithm 2,
  ``steps`` <= T; ``algorithm`` improved | naive) -> D -> HU.  ``checkpoint``: ``""`` (the shipped
  ``ct128-latent-cold``), a ``medrecon train --recipe ct-latent-cold`` run folder (``autoencoder/`` +
  ``latent/``), or the latent checkpoint with ``autoencoder=DIR``.
- ``pixel-ddpm``: FBP -> HU / 1000 as the condition -> ``medrecon.sample`` with ``solver``,
  ``steps``, ``eta``, ``clip_x0`` and ``ldct_above`` (`medrecon.ct.pixel_ddpm`); the batch of
  slices starting at slice k draws its noise from ``seed + k``.

The networks need slices of the size they were trained at (checked).  Loaded networks are held
in a `medrecon.methods.priors.PriorCache` (`networks`) for the next scan of the run.  `reconstruct_ct` adds the timing and
the metrics (`medrecon.ct.evaluate.ct_metrics`, HU) against the scan's reference; files in and
out are `medrecon.pipeline`'s.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inputs import CTScan

__all__ = ["CTNetworks", "networks", "checkpoint_dir", "fbp_hu", "ldct_image", "denoise", "reconstruct_ct"]


class CTNetworks:
    """The loaded networks of one CT denoising method (``latent-cold-diffusion`` or
    ``pixel-ddpm``), with the slice size they were trained at."""

    def __init__(self, method: str, opts, device: torch.device) -> None:
        self.method, self.device, self.size = method, device, None
        ck = checkpoint_dir(method, opts)
        if not ck.exists():
            recipe = "ct-latent-cold" if method == "latent-cold-diffusion" else "ct-pixel-ddpm"
            raise ValueError(f"-o checkpoint={opts.checkpoint}: no such folder (a builtin CT prior name, or "
                             f"train one with `medrecon train --recipe {recipe}`)")
        if method == "latent-cold-diffusion":
            from .autoencoder import load_autoencoder
            from .cold_diffusion import load_cold_diffusion

            lat, ae = ck, opts.autoencoder
            if ae is None and (ck / "latent").is_dir():
                lat, ae = ck / "latent", ck / "autoencoder"
            if ae is None:
                raise ValueError(f"-o checkpoint={ck}: not a ct-latent-cold run folder (no latent/ "
                                 "and autoencoder/ inside); pass -o autoencoder=DIR with a latent "
                                 "checkpoint")
            self.ae = load_autoencoder(ae, device)
            self.cold = load_cold_diffusion(lat, device)
            self.size = _trained_size(lat) or _trained_size(Path(ae))
        elif method == "pixel-ddpm":
            from .pixel_ddpm import load_pixel_ddpm

            self.pixel = load_pixel_ddpm(ck, device)
            self.size = _trained_size(ck)
        else:
            raise ValueError(f"method {method!r} has no CT networks")

    def check(self, opts) -> None:
        """Options that need the loaded networks: ``steps`` <= T (cold), a known ``solver``."""
        if self.method == "latent-cold-diffusion":
            if opts.steps is not None and opts.steps > self.cold.T:
                raise ValueError(f"option steps={opts.steps}: the cold schedule has T = "
                                 f"{self.cold.T} steps")
        else:
            from medrecon.sample import SOLVERS

            if opts.solver not in SOLVERS:
                raise ValueError(f"option solver={opts.solver!r}: expected one of "
                                 f"{', '.join(SOLVERS)}")


    def __call__(self, ldct: torch.Tensor, opts, seed: int) -> tuple[torch.Tensor, int]:
        """Denoise normalised LDCT ``[B, 1, N, N]``; returns (image, NFE per slice batch)."""
        x = ldct.to(self.device, torch.float32)
        if self.method == "latent-cold-diffusion":
            from .cold_diffusion import reconstruct_cold

            return reconstruct_cold(self.cold, self.ae, x, opts.steps, opts.algorithm,
                                    opts.decoder_residual)
        from .pixel_ddpm import sample_pixel_ddpm

        extra = {"eta": opts.eta} if opts.eta is not None else {}
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        return sample_pixel_ddpm(self.pixel, x, opts.solver, opts.steps, generator=g,
                                 clip_x0=opts.clip_bound, ldct_above=opts.ldct_above, **extra)


def networks(method: str, opts, device, cache) -> CTNetworks:
    """The networks of ``method`` for ``opts`` on ``device``, held in ``cache`` (a
    `medrecon.methods.priors.PriorCache`: loaded once for all the scans of a run).  Raises the
    option errors (missing checkpoint, ``steps`` over T, unknown solver) before any work."""
    device = torch.device(device or "cpu")
    key = ("ct-" + method, str(checkpoint_dir(method, opts).resolve()), getattr(opts, "autoencoder", None),
           str(device))
    nets = cache.get(key, lambda: CTNetworks(method, opts, device))
    nets.check(opts)
    return nets


def checkpoint_dir(method: str, opts) -> Path:
    """The folder behind ``opts.checkpoint``: ``""`` is the method's shipped CT prior, a builtin name
    its folder, anything else a path."""
    from medrecon.builtin_priors import resolve_checkpoint
    from medrecon.methods.priors import CT_LATENT_PRIOR, CT_PIXEL_PRIOR

    default = CT_LATENT_PRIOR if method == "latent-cold-diffusion" else CT_PIXEL_PRIOR
    return resolve_checkpoint(opts.checkpoint or "", default)


def _trained_size(directory: Path) -> int | None:
    cfg = directory / "config.json"
    if not cfg.is_file():
        return None
    extra = json.loads(cfg.read_text()).get("extra", {})
    size = extra.get("data", {}).get("size") if isinstance(extra, dict) else None
    return int(size) if size else None


def fbp_hu(scan: CTScan, sinogram: torch.Tensor, filt: str) -> torch.Tensor:
    """FBP of ``sinogram`` in the scan's geometry, in HU."""
    from medrecon.physics.ct import fbp, mu_to_hu

    return mu_to_hu(fbp(sinogram, scan.geometry, filt, short_scan=scan.short_scan), scan.mu_water)


def ldct_image(scan: CTScan, filt: str) -> torch.Tensor:
    """The low-dose image in HU ``[S, N, N]`` float64: the series itself with ``dose=low``, else
    the FBP of the low-dose sinogram."""
    if scan.ldct_hu is not None:
        return torch.from_numpy(scan.ldct_hu).double()
    return fbp_hu(scan, scan.sinogram, filt)


def denoise(nets: CTNetworks, scan: CTScan, opts, seed: int,
            batch_size: int) -> tuple[torch.Tensor, int]:
    """The network method on the scan's LDCT image: ``batch_size`` slices per call (1: all at
    once); the batch starting at slice k is seeded ``seed + k``.  Returns (HU, NFE per call)."""
    from .data import from_hu

    # any N: the networks are convolutional (padded to their multiple, models.padding).  The shipped
    # 128x128 priors beat FBP on pydicom's real 512x512 slices (docs/priors.md), so a size other
    # than the training size is not refused (before 2026-12-06 it was)
    x = from_hu(ldct_image(scan, opts.filter)).float()[:, None]
    b = batch_size if batch_size > 1 else x.shape[0]
    parts, nfe = [], 0
    for i in range(0, x.shape[0], b):
        y, nfe = nets(x[i:i + b], opts, seed + i)
        parts.append(y.detach().cpu())
    return torch.cat(parts)[:, 0].double() * 1000.0, nfe


def reconstruct_ct(scan: CTScan, spec, opts, *, seed: int, device=None, batch_size: int = 1,
                   priors=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the registered CT method ``spec`` (a `medrecon.registry.MethodSpec`) on ``scan``: ``(HU volume [S, N, N]
    float32, {"nfe", "seconds", "metrics"})``.  ``metrics`` (RMSE in HU, PSNR, SSIM) are against
    the scan's reference (the FBP of its noise-free sinogram with the method's filter, or its
    reference image), None without one or when no pixel lies inside the body.  ``priors``: the
    `medrecon.methods.priors.PriorCache` holding the networks (None: the default one)."""
    from .evaluate import ct_metrics

    t0 = time.perf_counter()
    out, nfe = spec.fn(scan, opts, seed=seed, device=torch.device(device or "cpu"),
                  batch_size=batch_size)
    seconds = time.perf_counter() - t0
    out_np = out.detach().cpu().numpy().astype(np.float32)
    if not np.isfinite(out_np).all():
        raise ValueError(f"{scan.path}: {spec.name} produced NaN or Inf")
    ref = scan.reference_hu
    if isinstance(ref, tuple):
        ref = fbp_hu(scan, ref[1], opts.filter).cpu().numpy().astype(np.float32)
    metrics = None
    if ref is not None:
        r = torch.from_numpy(np.asarray(ref, np.float32))[:, None] / 1000.0
        try:
            metrics = ct_metrics(r, torch.from_numpy(out_np)[:, None] / 1000.0)
        except ValueError:  # no pixel inside the body: nothing to score
            metrics = None
    return out_np, {"nfe": int(nfe), "seconds": seconds, "metrics": metrics}
