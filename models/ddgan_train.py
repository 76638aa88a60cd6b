"""Training loop of the denoising diffusion GAN (Xiao et al. 2022, Alg. 1), with resume.

Per step (randomness from ``step_generator(seed, 0, step)``, so a resumed run continues exactly):
k ~ U{1..T}; (x_{k-1}, x_k) from the forward chain; x0' = G(x_k, k, z); x'_{k-1} ~ q(x_{k-1}|x_k, x0');
D step on softplus(-D(x_{k-1})) + softplus(D(x'_{k-1})) + r1_gamma/2 R1 (R1 every ``lazy_reg`` steps);
G step on softplus(-D(x'_{k-1})) + ``lambda_rec`` |x0' - x0|_1 (the same G forward is reused).
``lambda_rec`` = 0 is the paper's objective; a small positive weight (an L1 term on x0, as
MRI DDGAN variants such as SynDiff add) makes short CPU runs converge to usable x0 predictions.
Adam(beta1 0.5, beta2 0.9) for both, EMA of G.  Checkpoints: ``out_dir/step-XXXXXXXX/``
(``medrecon.models.ddgan.save_ddgan``), losses in ``out_dir/log.jsonl``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .ddgan import DDGANConfig, Generator, build_ddgan, d_loss, g_loss, load_ddgan, save_ddgan
from .train_common import CHECKPOINT_NAME, EMA, latest_checkpoint, step_generator, to_model_input

__all__ = ["train_ddgan", "DDGANTrainResult", "ddgan_step"]

@dataclass
class DDGANTrainResult:
    generator: Generator
    ema: EMA | None
    step: int
    log: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def ddgan_step(G, D, opt_g, opt_d, x0: torch.Tensor, g: torch.Generator, *, r1_gamma: float,
               lambda_rec: float, do_r1: bool = True, grad_clip: float | None = None) -> dict[str, float]:
    """One discriminator and one generator update on a clean batch ``x0``; returns the losses."""
    sched = G.schedule
    b = x0.shape[0]
    k = torch.randint(1, sched.num_steps + 1, (b,), generator=g, device=x0.device).cpu()
    x_prev, x_k = sched.q_pair(x0, k, g)
    z = G.sample_z(b, g, x0.device)
    x0_fake = G(x_k, k, z)
    fake_prev = sched.posterior_sample(x_k, x0_fake, k, g)

    D.requires_grad_(True)
    ld, rec = d_loss(D, x_prev, fake_prev, x_k, k, r1_gamma if do_r1 else 0.0)
    _descend(opt_d, ld, D, grad_clip)

    D.requires_grad_(False)
    lg = g_loss(D, fake_prev, x_k, k)
    diff = x0_fake - x0
    l1 = (torch.view_as_real(diff) if diff.is_complex() else diff).abs().mean()
    loss = lg + lambda_rec * l1 if lambda_rec else lg
    _descend(opt_g, loss, G, grad_clip)
    D.requires_grad_(True)
    return {**rec, "d_loss": float(ld.detach()), "g_adv": float(lg.detach()), "l1_x0": float(l1.detach())}


def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module, grad_clip: float) -> None:
    """One optimiser step on ``loss`` (gradients of ``module`` clipped to ``grad_clip`` when set)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()


def train_ddgan(
    config: DDGANConfig | dict,
    dataset: torch.utils.data.Dataset,
    out_dir: str | os.PathLike,
    *,
    steps: int = 1000,
    batch_size: int = 8,
    lr_g: float = 1.6e-4,
    lr_d: float = 1.25e-4,
    r1_gamma: float = 0.05,
    lazy_reg: int = 1,
    lambda_rec: float = 0.0,
    ema_decay: float | None = 0.999,
    grad_clip: float | None = None,
    save_every: int | None = None,
    keep: int = 2,
    max_minutes: float | None = None,
    resume: bool = True,
    overwrite: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> DDGANTrainResult:
    """Train (or resume) a DDGAN on ``dataset`` (items complex [H, W] or real [C, H, W]).

    ``steps`` is the total step count; ``max_minutes`` stops earlier at a wall-clock budget and
    checkpoints there (a later call with the same ``out_dir`` resumes).
    """
    cfg = config if isinstance(config, DDGANConfig) else DDGANConfig.from_dict(config)
    for name, val in (("steps", steps), ("batch_size", batch_size), ("lazy_reg", lazy_reg)):
        if int(val) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val}")
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    G, D = build_ddgan(cfg, seed=seed)
    G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=(0.5, 0.9))
    ema = EMA(G, ema_decay) if ema_decay else None
    last = latest_checkpoint(out)
    if last is not None and not resume:
        if not overwrite:
            raise FileExistsError(f"out_dir: {out} already holds checkpoints ({last.name}); pass resume=True "
                                  "to continue them or overwrite=True to replace them")
        for p in out.iterdir():
            if CHECKPOINT_NAME.match(p.name):
                shutil.rmtree(p)
        last = None
    start = 0
    if last is not None:
        ck = load_ddgan(last, map_location=device)
        if ck.config != cfg:
            raise ValueError(f"{last}/config.json: DDGAN config {ck.config} differs from the requested {cfg}")
        G.load_state_dict(ck.generator.state_dict())
        D.load_state_dict(ck.discriminator.state_dict())
        if ck.opt_g is not None:
            opt_g.load_state_dict(ck.opt_g)
        if ck.opt_d is not None:
            opt_d.load_state_dict(ck.opt_d)
        if ema is not None and ck.ema is not None:
            ema.load_state_dict(ck.ema)
        start = ck.step
    out.mkdir(parents=True, exist_ok=True)
    meta = {"lr_g": lr_g, "lr_d": lr_d, "r1_gamma": r1_gamma, "lazy_reg": lazy_reg, "lambda_rec": lambda_rec,
            "batch_size": batch_size, "ema_decay": ema_decay, "seed": seed, **(extra or {})}

    def checkpoint(step: int) -> Path:
        path = save_ddgan(out / f"step-{step:08d}", G, D, step=step, ema=ema.shadow if ema else None,
                          opt_g=opt_g, opt_d=opt_d, extra=meta, overwrite=True)
        done = sorted(p for p in out.iterdir() if CHECKPOINT_NAME.match(p.name))
        for old in done[:-keep] if keep > 0 else []:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return path

    pbar = None
    if progress and start < steps:
        from tqdm.auto import tqdm
        pbar = tqdm(total=steps, initial=start, desc="ddgan", dynamic_ncols=True)
    t0 = time.monotonic()
    records: list[dict[str, float]] = []
    last_path = last if start >= steps else None
    step = start
    G.train(), D.train()
    try:
        with open(out / "log.jsonl", "a") as log:
            for step in range(start, steps):
                g = step_generator(seed, 0, step, device)
                idx = torch.randint(0, len(dataset), (batch_size,), generator=g, device=device).tolist()
                x0 = to_model_input(torch.stack([torch.as_tensor(dataset[i]) for i in idx]).to(device),
                                     cfg.unet.in_channels)
                rec = ddgan_step(G, D, opt_g, opt_d, x0, g, r1_gamma=r1_gamma, lambda_rec=lambda_rec,
                                 do_r1=step % lazy_reg == 0, grad_clip=grad_clip)
                if ema is not None:
                    ema.update(G)
                rec = {"step": step + 1, **rec, "elapsed_s": round(time.monotonic() - t0, 2)}
                records.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_adv']:.3f}", l1=f"{rec['l1_x0']:.4f}")
                done = step + 1
                out_of_time = max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes
                if out_of_time or done == steps or (save_every and done % save_every == 0):
                    last_path = checkpoint(done)
                if out_of_time:
                    step = done
                    break
            else:
                step = max(start, steps)
    finally:
        if pbar is not None:
            pbar.close()
    G.eval()
    return DDGANTrainResult(G, ema, step, records, last_path)
