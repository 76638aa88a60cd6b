"""FDMR: fast diffusion MRI reconstruction with a denoising-diffusion-GAN prior, three stages
(METHODS.md; Magn. Reson. Imaging 2025, 110551 -- no public code).  The DDGAN chain of stages 1 and 3
follows repository NVlabs/denoising-diffusion-gan, file test_ddgan.py (commit 6818ded), lines 114-126
(``sample_from_model``: x0 = G(x_k, k, z)) and lines 89-112 (``sample_posterior``: q(x_{k-1} | x_k,
x0), no noise at the last step), with FDMR's data consistency applied to x0.  Stage 3 with
``refine_prior`` follows repository wyhuai/DDNM, file functions/svd_ddnm.py, lines 57-65 (the
range-null-space projection, then the DDIM update; ``medrecon.posterior.ddim_dc``).

On the SENSE operator A = M F S (``medrecon.physics.mri.MultiCoilMRI``), with G(x_k, k, z) a
DDGAN generator (``medrecon.models.ddgan``) on its T-step VP schedule:

1. Fast generation: x_init = A^H y (zero-filled) or CG-SENSE, diffused to step ``start`` (T):
   x_k = sqrt(abar_k) x_init + sqrt(1 - abar_k) e; for k = start..1:
   x0_hat = DC(G(x_k, k, z)), x_{k-1} ~ q(x_{k-1} | x_k, x0_hat) (Xiao et al. 2022, Eq. 6-9);
   DC(x) = x + A^+ (y - A x) (hard data consistency, CG for A^+).
2. Early-stopped adaptation (per slice, on a copy of G: the shared weights never change):
   Adam on the generator weights minimising mean |M_fit F S G(x_1, 1, z) - y| (the paper's
   G(x, 0, z) in 0-based step indexing), where ``holdout`` of the measured k-space lines (outside
   the fully sampled centre; samples for non-line masks) are held out of M_fit; their residual is
   tracked each iteration and the output at its minimum is kept once it has not improved for
   ``patience`` iterations (no ground truth needed; ``holdout_masks``).
3. Refinement: a few DC'd steps from a small noise level: either the generator's own chain from
   step ``refine_from`` (default 1, its smallest level), or, with ``refine_prior`` = a VP eps
   checkpoint, CCDF-style DDIM steps with the DDNM projection from ``refine_t0`` of a
   ``refine_steps`` grid (``medrecon.posterior.ccdf``).

Defaults (chosen on validation volume seed 1500, 8x, 320x320, not the test volumes; docs/fdmr.md):
stage 1 starts from CG-SENSE diffused to step 2 of T = 4 (abar 0.08), not from zero-filled at T, and
stage 3 runs 6 DDNM-projected DDIM steps of the shipped VP prior from t0 = 0.3 of a 20-step grid.
With METHODS.md's settings (zero-filled at T, the generator's chain as refinement) the shipped
generator gave 19.7 dB there, below CG-SENSE (21.4); with these, 28.0 dB at 14 NFE.

NFE counts every generator/prior forward pass (adaptation iterations included).  ``normalize``
divides each slice's k-space by max |A^H y| (the training scale of the recipe) and multiplies back
(the registered method, its checkpoint loading and scale: `medrecon.methods.fdmr`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from medrecon.models.padding import PaddedNet
from medrecon.physics.mri import MultiCoilMRI, check_mask

from .ccdf import ccdf, initial_estimate
from .common import check_finite, noise_like
from .ddnm import ddnm_dc

__all__ = ["FDMROptions", "fdmr", "adapt", "holdout_masks"]


@dataclass
class FDMROptions:
    checkpoint: str = ""  # "": the shipped brain128-ddgan; a builtin name, a DDGAN checkpoint or a run folder
    ema: bool = True  # the EMA generator weights when the checkpoint has them
    generation: bool = True
    init: str = "cg-sense"  # or "zero-filled" (METHODS.md); defaults chosen on a validation volume (docs/fdmr.md)
    init_cg_iters: int = 10
    start: int = 2  # step the initial image is diffused to; 0: T (METHODS.md: from T)
    adaptation: bool = True
    adapt_iters: int = 30
    adapt_lr: float = 1e-4  # METHODS.md: 1e-3; measured worse on the demo prior (docs/fdmr.md)
    holdout: float = 0.1
    patience: int = 5
    min_improvement: float = 0.01  # relative drop of the held-out residual that counts as progress
    refinement: bool = True
    refine_from: int = 1
    refine_prior: str = "brain128-vp"  # a VP eps checkpoint (path or builtin name); "": the generator's chain
    refine_steps: int = 20
    refine_t0: float = 0.3
    cg_iters: int = 10
    normalize: bool = True


def holdout_masks(mask_hw: torch.Tensor, fraction: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the measured samples of ``mask_hw`` [H, W] into (fit, held-out) 0/1 masks, drawn with
    ``generator``.  A line mask (every row alike) holds out a random ``fraction`` of its measured
    columns outside the fully sampled centre (whole lines: the residual on held-out lines predicts
    the error on the unmeasured lines; held-out points of measured lines would be interpolated
    from their neighbours and keep falling while the image degrades); any other mask holds out
    a random ``fraction`` of its measured samples.  At least one is held out, at least one kept."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout: expected a fraction in (0, 1), got {fraction}")
    measured = mask_hw > 0
    if bool((measured == measured[:1]).all()):
        cols = measured[0]
        W = cols.numel()
        lo = hi = W // 2
        while lo > 0 and bool(cols[lo - 1]):
            lo -= 1
        while hi < W and bool(cols[hi]):
            hi += 1
        outer = cols.clone()
        outer[lo:hi] = False
        idx = torch.nonzero(outer if int(outer.sum()) >= 2 else cols).reshape(-1)
        if int(cols.sum()) < 2:
            raise ValueError("mask: adaptation needs at least 2 measured k-space lines")
        n_hold = min(max(1, round(fraction * idx.numel())), int(cols.sum()) - 1)
        perm = torch.randperm(idx.numel(), generator=generator, device=generator.device).to(idx.device)
        hold_cols = torch.zeros(W, device=mask_hw.device)
        hold_cols[idx[perm[:n_hold]]] = 1
        hold = hold_cols.expand(mask_hw.shape).clone()
        return measured.to(hold.dtype) - hold, hold
    idx = torch.nonzero(measured.reshape(-1)).reshape(-1)
    if idx.numel() < 2:
        raise ValueError("mask: adaptation needs at least 2 measured k-space samples")
    n_hold = min(max(1, round(fraction * idx.numel())), idx.numel() - 1)
    perm = torch.randperm(idx.numel(), generator=generator, device=generator.device).to(idx.device)
    hold = torch.zeros(mask_hw.numel(), device=mask_hw.device)
    hold[idx[perm[:n_hold]]] = 1
    hold = hold.reshape(mask_hw.shape)
    return measured.to(hold.dtype) - hold, hold


def adapt(G, x_in: torch.Tensor, z: torch.Tensor, y: torch.Tensor, smaps: torch.Tensor, mask_hw: torch.Tensor,
          generator: torch.Generator, *, iters: int = 30, lr: float = 1e-4, holdout: float = 0.1,
          patience: int = 5, min_improvement: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Stage 2 for one slice: fine-tune a copy of ``G`` on the fit samples of ``y`` [C, H, W] from the
    input ``x_in`` [H, W] (fed at step 1 with latent ``z`` [z_dim]); returns G's output [H, W] at the
    lowest held-out residual and a record (``residuals``, ``best_iter``, ``stopped_early``, ``nfe``);
    a residual counts as lower only when below (1 - ``min_improvement``) times the best so far.
    ``G`` itself is not modified."""
    if iters < 1 or patience < 1:
        raise ValueError(f"adapt_iters and patience: expected >= 1, got {iters}, {patience}")
    if not 0 <= min_improvement < 1 or lr <= 0:
        raise ValueError(f"min_improvement: expected [0, 1), adapt_lr > 0; got {min_improvement}, {lr}")
    fit, hold = holdout_masks(mask_hw, holdout, generator)
    A_fit, A_hold = MultiCoilMRI(smaps, fit), MultiCoilMRI(smaps, hold)
    y_fit, y_hold = y * fit, y * hold
    n_fit = float(fit.sum()) * y.shape[-3]
    n_hold = float(hold.sum()) * y.shape[-3]
    Gc = copy.deepcopy(G).requires_grad_(True)
    opt = torch.optim.Adam(Gc.parameters(), lr=lr)
    xb, zb = x_in[None], z[None]
    best, best_x, best_iter, bad = float("inf"), None, 0, 0
    residuals: list[float] = []
    it = 0
    for it in range(iters):
        out = Gc(xb, 1, zb)[0]
        with torch.no_grad():
            r = float((A_hold.forward(out) - y_hold).abs().sum()) / n_hold
        residuals.append(r)
        if r < best * (1 - min_improvement):
            best, best_x, best_iter, bad = r, out.detach().clone(), it, 0
        else:
            bad += 1
            if bad >= patience:
                break
        loss = (A_fit.forward(out) - y_fit).abs().sum() / n_fit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    stopped = len(residuals) < iters or bad >= patience
    return best_x, {"residuals": residuals, "best_iter": best_iter, "stopped_early": stopped, "nfe": len(residuals)}


def _flatten(kspace, mask, smaps):
    """kspace/smaps [..., C, H, W] -> [B, C, H, W]; the mask -> [B, H, W] (0/1 float)."""
    C, H, W = kspace.shape[-3:]
    lead = kspace.shape[:-3]
    if smaps.shape[-3:] != (C, H, W):
        raise ValueError(f"smaps: expected [..., {C}, {H}, {W}] like the k-space, got {tuple(smaps.shape)}")
    m = check_mask(mask, (H, W)).to(kspace.device)
    B = math.prod(lead)
    y = kspace.reshape(B, C, H, W)
    s = torch.broadcast_to(smaps, lead + (C, H, W)).reshape(B, C, H, W)
    m = torch.broadcast_to(m, lead + (m.shape[-2], W)).reshape(B, m.shape[-2], W).expand(B, H, W)
    return y, s, m


def fdmr(G, kspace: torch.Tensor, mask: torch.Tensor, smaps: torch.Tensor, generator: torch.Generator,
         opts: FDMROptions | None = None, *, refine_eps=None, refine_betas=None,
         record: dict | None = None, callback=None) -> tuple[torch.Tensor, int]:
    """FDMR reconstruction of multi-coil ``kspace`` [..., C, H, W] (already normalised) with SENSE
    ``smaps``; returns (image [..., H, W], nfe).  ``refine_eps``/``refine_betas``: a VP eps prior for
    stage 3 (else the generator's chain).  ``record`` (a dict) receives per-stage details.
    ``callback(i, x)``: called with the image estimate [B, H, W] after every generation and refinement
    step and after the adaptation, i counting these calls from 0."""
    opts = opts or FDMROptions()
    if not isinstance(kspace, torch.Tensor) or not kspace.is_complex() or kspace.ndim < 3:
        raise ValueError(f"kspace: expected complex multi-coil k-space [..., C, H, W], got "
                         f"{getattr(kspace, 'dtype', type(kspace).__name__)} {tuple(getattr(kspace, 'shape', ()))}")
    check_finite(kspace, "kspace")
    if not isinstance(generator, torch.Generator):  # any device: holdout_masks draws on generator.device
        raise ValueError("generator: expected a torch.Generator (seeds are explicit)")
    if opts.init not in ("zero-filled", "cg-sense"):
        raise ValueError(f"fdmr option init: expected 'zero-filled' or 'cg-sense', got {opts.init!r}")
    T = G.schedule.num_steps
    start = opts.start or T
    if not 1 <= start <= T:
        raise ValueError(f"fdmr option start: expected 1..{T} (0 for T), got {opts.start}")
    if opts.refinement and refine_eps is None and not 1 <= opts.refine_from <= T:
        raise ValueError(f"fdmr option refine_from: expected 1..{T}, got {opts.refine_from}")
    H, W = kspace.shape[-2:]
    G = PaddedNet(G)  # any H, W: reflect-padded to the U-Net's multiple, cropped back (models.padding)
    y, s, m = _flatten(kspace, mask, smaps)
    B = y.shape[0]
    A = MultiCoilMRI(s, m)
    dc = ddnm_dc(A, y, opts.cg_iters)
    sched = G.schedule
    rec = record if record is not None else {}
    z = G.sample_z(B, generator, y.device)
    nfe = 0
    calls = [0]

    def report(x: torch.Tensor) -> None:
        if callback is not None:
            callback(calls[0], x)
        calls[0] += 1

    with torch.no_grad():
        x_init = initial_estimate(A, y, opts.init_cg_iters if opts.init == "cg-sense" else 0)
        x_est = x_init
        x1 = sched.q_sample(x_init, 1, noise_like(x_init, generator))  # stage 2 input without stage 1
        if opts.generation:  # stage 1
            x = sched.q_sample(x_init, start, noise_like(x_init, generator))
            for k in range(start, 0, -1):
                if k == 1:
                    x1 = x
                x0 = dc(G(x, k, z), k)
                nfe += 1
                x = sched.posterior_sample(x, x0, k, generator)
                report(x)
            x_est = x
    rec["nfe_generation"] = nfe

    if opts.adaptation:  # stage 2, per slice
        outs, details = [], []
        for b in range(B):
            out, info = adapt(G, x1[b], z[b], y[b], s[b], m[b], generator, iters=opts.adapt_iters,
                              lr=opts.adapt_lr, holdout=opts.holdout, patience=opts.patience,
                              min_improvement=opts.min_improvement)
            outs.append(out)
            details.append(info)
            nfe += info["nfe"]
        with torch.no_grad():
            x_est = dc(torch.stack(outs), 1)
        report(x_est)
        rec["adaptation"] = details

    if opts.refinement:  # stage 3
        n0 = nfe
        with torch.no_grad():
            if refine_eps is not None:
                x_est, n = ccdf(refine_eps, A, y, refine_betas, opts.refine_steps, generator, t0=opts.refine_t0,
                                x_init=x_est, dc=dc, callback=lambda _, x: report(x))
                nfe += n
            else:
                k0 = opts.refine_from
                x = sched.q_sample(x_est, k0, noise_like(x_est, generator))
                for k in range(k0, 0, -1):
                    x0 = dc(G(x, k, z), k)
                    nfe += 1
                    x = sched.posterior_sample(x, x0, k, generator)
                    report(x)
                x_est = x
        rec["nfe_refinement"] = nfe - n0
    return x_est.reshape(kspace.shape[:-3] + (H, W)), nfe
