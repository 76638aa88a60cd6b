"""The small optimisation loop shared by the CT trainers (autoencoder, latent net, pixel DDPM).

It reuses the pieces of ``medrecon.models.train_common``: the per-step generator
``step_generator(seed, rank=0, step)`` (all randomness of step k -- batch indices, t, noise --
depends only on (seed, k)), AdamW, gradient-norm clipping and the ``EMA`` class.  ``medrecon.models.train.train``
itself cannot be called: it trains unconditional Gaussian priors on a dataset of clean images,
while these objectives need (NDCT, LDCT) pairs, a KL term or a cold degradation.
Single process, no mixed precision.  Checkpoints are written at the end by the callers; a run can
be continued from saved weights with ``start_step`` (step k still draws from ``(seed, k)``, so the
batches do not repeat) and ``ema_state`` (the saved EMA); the AdamW moments are not saved and
restart from zero.

EMA with warm-up: the effective decay at update k (counted from 0 over the whole run) is
``min(decay, (1 + k) / (10 + k))`` (diffusers' ``EMAModel`` formula without
``use_ema_warmup``), so a short CPU run is not dominated by the random initial weights (with a
fixed 0.999 they would still weigh 0.999^3000 = 5 % after 3000 steps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from medrecon.models.train_common import EMA, step_generator

__all__ = ["FitResult", "WarmupEMA", "fit", "fit_pairs", "check_steps"]


class WarmupEMA(EMA):
    """``EMA`` whose decay at update k is ``min(decay, (1 + k) / (10 + k))``."""

    def __init__(self, module: nn.Module, decay: float, start: int = 0,
                 state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(module, decay)
        self.max_decay = self.decay
        self.count = int(start)
        if state is not None:
            self.load_state_dict(state)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        k = self.count
        self.decay = min(self.max_decay, (1.0 + k) / (10.0 + k))
        super().update(module)
        self.count += 1


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)
    ema: EMA | None = None
    seconds: float = 0.0  # wall-clock time of the optimisation steps


def check_steps(steps: int, batch_size: int) -> None:
    for name, val in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(val, bool) or int(val) != val or int(val) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")


def fit(net: nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], *, steps: int,
        lr: float, seed: int, device: torch.device, ema_decay: float | None = None,
        grad_clip: float | None = 1.0, params=None, progress: bool = False, start_step: int = 0,
        ema_state: dict[str, torch.Tensor] | None = None, lr_min: float | None = None) -> FitResult:
    """Run ``steps`` AdamW steps (numbered ``start_step ..``) on ``loss_fn(generator)``; the net is
    left in eval mode.  ``ema_state`` seeds the EMA when continuing a run.  ``lr_min``: the
    learning rate decays from ``lr`` to ``lr_min`` on a half cosine over the steps of this call
    (SGDR without restarts, Loshchilov & Hutter 2017); None keeps ``lr`` constant."""
    params = list(net.parameters()) if params is None else list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if lr_min is not None and not 0 <= lr_min <= lr:
        raise ValueError(f"lr_min: expected 0 <= lr_min <= lr = {lr}, got {lr_min}")
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(steps)), eta_min=lr_min)
             if lr_min is not None else None)
    start = int(start_step)
    if start < 0:
        raise ValueError(f"start_step: expected >= 0, got {start_step!r}")
    ema = WarmupEMA(net, ema_decay, start, ema_state) if ema_decay else None
    res = FitResult(ema=ema)
    pbar = None
    if progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=steps, desc="train", dynamic_ncols=True)
    net.train()
    t0 = time.perf_counter()
    try:
        for step in range(start, start + int(steps)):
            g = step_generator(seed, 0, step, device)
            loss = loss_fn(g)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update(net)
            res.losses.append(float(loss.detach()))
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{res.losses[-1]:.4f}")
    finally:
        if pbar is not None:
            pbar.close()
    res.seconds = time.perf_counter() - t0
    net.eval()
    return res


def fit_pairs(model: Any, clean: torch.Tensor, degraded: torch.Tensor,
              pair_loss: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
              save: Callable[..., Path], *, batch_size: int, steps: int, lr: float, seed: int,
              device: torch.device, ema_decay: float | None, grad_clip: float | None,
              progress: bool, start_step: int, ema_state: dict | None, out_dir,
              overwrite: bool, extra: dict | None) -> tuple[FitResult, Path | None]:
    """`fit` ``model.net`` on ``pair_loss(clean[idx], degraded[idx], g)`` over random batches of
    paired tensors (the CT denoisers: latent cold diffusion, pixel DDPM); with ``out_dir`` save it
    by ``save(out_dir, model, ema=, step=, overwrite=, extra=)``.  Returns (result, saved path)."""
    def loss_fn(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, clean.shape[0], (batch_size,), generator=g, device=device)
        return pair_loss(clean[idx], degraded[idx], g)

    model.net.requires_grad_(True)
    res = fit(model.net, loss_fn, steps=steps, lr=lr, seed=seed, device=device, ema_decay=ema_decay,
              grad_clip=grad_clip, progress=progress, start_step=start_step, ema_state=ema_state)
    path = None
    if out_dir is not None:
        path = save(out_dir, model, ema=res.ema.shadow if res.ema else None,
                    step=int(start_step) + steps, overwrite=overwrite, extra=extra)
    return res, path
