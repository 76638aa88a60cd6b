"""Training loop for diffusion priors: eps / v objectives (VP) and denoising score matching (VE).

Objectives (x_t = alpha_t x0 + sigma_t z, z standard normal; CN(0, I) for complex images, see below):

- ``"eps"``  (Ho et al., NeurIPS 2020, Eq. 14): ||f(x_t, t) - z||^2, t uniform over the N
  discrete training timesteps.
- ``"v"``    (Salimans & Ho, ICLR 2022, Sec. 4): ||f(x_t, t) - (alpha_t z - sigma_t x0)||^2.
- ``"score"`` (Song et al., ICLR 2021, Eq. 7, VE-SDE, weight lambda = sigma^2):
  sigma^2 ||s(x_t) + z / sigma||^2 = ||f + z||^2 with f = sigma * s (``scale_by_sigma``);
  t uniform on [0, 1] of the VE schedule's time.
- ``"hfs"`` (Cao, Cui et al., IEEE TMI 2024): the HFS-SDE denoising score matching loss of
  ``medrecon.models.hfs_process.hfs_loss`` (noise on the high frequencies only, the process given
  by ``hfs=HFSSDE(...)``, stored in the checkpoint config as ``extra["hfs"]``); a VE ``"score"``
  model conditioned on the noise level std(t) (default schedule VE(1e-3, 1), the range of std).

Complex images are noised with circular complex Gaussian noise z ~ CN(0, I) (real and imaginary
parts each N(0, 1/2), E|z|^2 = 1): the convention of the solvers' ancestral noise
(``medrecon.solvers.base.noise_like``) and of the analytic prior (``medrecon.gaussian_prior``), so a
complex x_T for sampling is ``torch.randn(..., dtype=torch.complex64)`` and DDPM / DDIM(eta > 0)
add noise of the variance the model was trained with.  Real images [B, C, H, W] get N(0, 1) per
channel, as in diffusers.

Reproducibility and resumption: all randomness at step k (batch indices, t, z) comes from a
generator seeded by (seed, rank, k) (`medrecon.models.train_common`), so resuming from a checkpoint (model, EMA, optimizer, step)
continues bit-for-bit like the uninterrupted run.  Checkpoints go to ``out_dir/step-XXXXXXXX/``
(``medrecon.models.checkpoint``); ``out_dir/log.jsonl`` logs losses.

Multi-GPU: launch with ``torchrun --nproc_per_node=G -m medrecon.cli.main train ...`` (or call
``train`` from a script run by torchrun).  ``train`` detects ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``, initialises the process group (NCCL on CUDA, gloo otherwise), wraps the network in
``DistributedDataParallel``, gives every rank its own batches, and lets rank 0 alone write
checkpoints, logs and sample grids.  ``batch_size`` is per rank.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint, save_checkpoint
from .hfs_process import HFSSDE, hfs_loss
from .networks import UNetConfig, build_unet, preset
from .train_common import (CHECKPOINT_NAME, EMA, latest_checkpoint, randn_like, step_generator,
                           to_model_input)
from .wrapper import DiffusionModel, is_ve

# EMA, latest_checkpoint, step_generator live in train_common and stay importable from here
__all__ = ["EMA", "TrainResult", "train", "OBJECTIVES", "latest_checkpoint", "step_generator"]

OBJECTIVES = {"eps": "eps", "v": "v", "score": "score", "hfs": "score"}  # objective -> prediction type


@dataclass
class TrainResult:
    model: DiffusionModel
    ema: EMA | None
    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


def _default_schedule(objective: str) -> Any:
    from .schedules import VE, VPSchedule, make_betas

    if objective == "score":
        return VE(sigma_min=0.01, sigma_max=50.0)
    if objective == "hfs":  # the network sees sigma = std(t) in (~1e-3, 1)
        return VE(sigma_min=1e-3, sigma_max=1.0)
    return VPSchedule(make_betas("linear", 1000))


def diffusion_loss(model: DiffusionModel, x0: torch.Tensor, objective: str, g: torch.Generator,
                   hfs: HFSSDE | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of the training loss on a clean batch ``x0`` (``hfs``: the HFS
    process for objective ``"hfs"``)."""
    if objective == "hfs":
        if hfs is None:
            raise ValueError("objective 'hfs' needs hfs=HFSSDE(...)")
        return hfs_loss(model, x0, hfs, g)
    b = x0.shape[0]
    sched = model.schedule
    if objective == "score":
        t = torch.rand(b, generator=g, device=x0.device)
    else:
        n = len(sched.alphas_cumprod)
        t = torch.randint(0, n, (b,), generator=g, device=x0.device).float()
    z = randn_like(x0, g)
    real = torch.float32 if x0.is_complex() else x0.dtype
    a, s = model._coeffs(t, x0.ndim, real)
    xt = a * x0 + s * z
    out = model.raw(xt, t)
    target = {"eps": z, "score": -z, "v": a * z - s * x0}[objective]
    diff = out - target
    diff = torch.view_as_real(diff) if diff.is_complex() else diff
    return diff.float().pow(2).mean()


def _dist_info() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _save_grid(images: torch.Tensor, path: Path) -> None:
    """Magnitude images [B, H, W] (or [B, C, H, W]) -> one PNG row, each scaled to [0, 255]."""
    from PIL import Image

    x = images.detach().cpu()
    x = x.abs() if x.is_complex() else (x[:, 0] if x.ndim == 4 else x)
    x = x.float()
    lo = x.flatten(1).amin(1)[:, None, None]
    hi = x.flatten(1).amax(1)[:, None, None]
    x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    grid = torch.cat(list(x), dim=1).numpy()
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


def train(
    model_or_config: DiffusionModel | UNetConfig | dict | str,
    dataset: torch.utils.data.Dataset,
    out_dir: str | os.PathLike,
    *,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 2e-4,
    objective: str = "eps",
    schedule: Any = None,
    ema_decay: float | None = 0.999,
    grad_clip: float | None = 1.0,
    mixed_precision: str = "no",
    resume: bool = True,
    overwrite: bool = False,
    save_every: int | None = None,
    keep: int = 2,
    val_dataset: torch.utils.data.Dataset | None = None,
    val_every: int = 0,
    sampler: Callable[..., torch.Tensor] | None = None,
    sample_every: int = 0,
    num_samples: int = 4,
    hfs: HFSSDE | None = None,
    time_limit: float | None = None,
    init: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) a diffusion prior; returns the model, its EMA and the losses.

    ``model_or_config``: a ``DiffusionModel`` (its prediction type must match ``objective``), a
    ``UNetConfig``/dict, or a preset name ("tiny", "small").  ``dataset[i]`` is a tensor
    ``[C, H, W]`` (real; C = 2 means real/imag) or complex ``[H, W]``.  ``sampler(eps_fn, x_T)``
    (e.g. ``functools.partial(medrecon.sample.sample, solver="ddim", steps=50, betas=...)``)
    draws validation samples from the EMA model every ``sample_every`` steps, saved as
    ``out_dir/samples-XXXXXXXX.png``.  ``steps`` is the total step count (a resumed run stops there).
    ``hfs``: the ``HFSSDE`` of objective ``"hfs"`` (default ``HFSSDE()``; complex images only).
    ``time_limit``: seconds of wall time after which training stops early (checked after each
    step, on rank 0's clock, shared with the other ranks) and checkpoints the step reached.
    ``init``: a checkpoint directory (a run's ``step-XXXXXXXX``: its EMA weights if it has them, or an
    exported prior) whose weights start a new run -- fine-tuning, with a fresh optimizer and the EMA
    starting at those weights; a run that resumes from its own checkpoint ignores it.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    if hfs is not None and objective != "hfs":
        raise ValueError(f"hfs: only used by objective 'hfs', got objective {objective!r}")
    if objective == "hfs":
        hfs = HFSSDE() if hfs is None else hfs
        if not isinstance(hfs, HFSSDE):
            raise ValueError(f"hfs: expected an HFSSDE, got {type(hfs).__name__}")
        if sampler is not None and sample_every:
            raise ValueError("sampler: sample grids are drawn for VP objectives only, not 'hfs'")
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision: expected 'no', 'bf16' or 'fp16', got {mixed_precision!r}")
    for name, val in (("steps", steps), ("batch_size", batch_size)):
        if int(val) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val}")
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    ws, rank, local_rank = _dist_info()
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision={mixed_precision!r} needs a CUDA device (got {device}); use 'no'")

    # -- model ------------------------------------------------------------------------------
    if isinstance(model_or_config, DiffusionModel):
        model = model_or_config
        net_cfg = getattr(model, "network_config", None)
        if net_cfg is None:
            raise ValueError("model_or_config: a DiffusionModel needs .network_config (UNetConfig) to be checkpointed")
        if model.prediction_type != OBJECTIVES[objective]:
            raise ValueError(f"objective {objective!r} trains a {OBJECTIVES[objective]!r} model, "
                             f"but the model predicts {model.prediction_type!r}")
    else:
        net_cfg = preset(model_or_config) if isinstance(model_or_config, str) else (
            model_or_config if isinstance(model_or_config, UNetConfig) else UNetConfig.from_dict(model_or_config))
        schedule = schedule if schedule is not None else _default_schedule(objective)
        model = DiffusionModel(build_unet(net_cfg, seed=seed), schedule, OBJECTIVES[objective], network_config=net_cfg)
    if (objective in ("score", "hfs")) != is_ve(model.schedule):
        raise ValueError(f"objective {objective!r} needs a {'VP' if objective in ('eps', 'v') else 'VE'} schedule")
    model.net.to(device)
    if init is not None:
        _load_init(model, init, objective, net_cfg, device)

    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(model.net, ema_decay) if ema_decay else None
    out = Path(out_dir)
    start = 0
    last = latest_checkpoint(out)
    if last is not None and not resume and not overwrite:
        raise FileExistsError(f"out_dir: {out} already holds checkpoints ({last.name}); pass resume=True "
                              "to continue them or overwrite=True to replace them")
    if last is not None and not resume:  # overwrite=True: this run replaces the old one
        if rank == 0:
            import shutil
            for p in out.iterdir():
                if CHECKPOINT_NAME.match(p.name):
                    shutil.rmtree(p)
        last = None
    if last is not None and resume:
        ck = load_checkpoint(last, map_location=device, prediction_type=model.prediction_type)
        if ck.network_config != net_cfg:
            raise ValueError(f"{last}/config.json: network {ck.network_config} differs from the requested {net_cfg}")
        model.net.load_state_dict(ck.model.net.state_dict())
        if ck.optimizer is not None:
            opt.load_state_dict(ck.optimizer)
        if ema is not None and ck.ema is not None:
            ema.load_state_dict(ck.ema)
        start = ck.step

    train_net: nn.Module = model.net
    own_group = False
    if ws > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            own_group = True
        train_net = DistributedDataParallel(model.net, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = DiffusionModel(train_net, model.schedule, model.prediction_type)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if mixed_precision == "fp16" else None
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    config = {"network": net_cfg, "objective": objective, "lr": lr, "batch_size": batch_size,
              "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed, "world_size": ws}
    if hfs is not None:
        config["hfs"] = hfs.to_dict()
    if init is not None:
        config["init"] = str(init)

    def checkpoint(step: int) -> Path | None:
        if not main:
            return None
        path = save_checkpoint(out / f"step-{step:08d}", model, config, ema=ema.shadow if ema else None,
                               step=step, optimizer=opt, overwrite=overwrite or resume)
        done = sorted(p for p in out.iterdir() if CHECKPOINT_NAME.match(p.name))
        for old in done[:-keep] if keep > 0 else []:
            if old != path:
                import shutil
                shutil.rmtree(old, ignore_errors=True)
        return path

    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit: expected a positive number of seconds, got {time_limit}")
    import time

    t_start = time.monotonic()
    losses: list[float] = []
    saved = False
    pbar = None
    if progress and main and start < steps:
        from tqdm.auto import tqdm
        pbar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
    log = open(out / "log.jsonl", "a" if resume else "w") if main else None
    last_path = last if start >= steps else None
    try:
        model.net.train()
        for step in range(start, steps):
            g = step_generator(seed, rank, step, device)
            idx = torch.randint(0, len(dataset), (batch_size,), generator=g, device=device).tolist()
            x0 = to_model_input(torch.stack([torch.as_tensor(dataset[i]) for i in idx]).to(device), model.in_channels)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = diffusion_loss(train_model, x0, objective, g, hfs)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if ema is not None:
                ema.update(model.net)
            losses.append(float(loss.detach()))
            done = step + 1
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{losses[-1]:.4f}")
            record: dict[str, Any] = {"step": done, "loss": losses[-1]}
            if val_dataset is not None and val_every and done % val_every == 0:
                record["val_loss"] = validation_loss(model, val_dataset, objective, seed, batch_size, device, hfs=hfs)
            if main and sampler is not None and sample_every and done % sample_every == 0:
                _sample_grid(model, ema, sampler, x0, num_samples, seed, out / f"samples-{done:08d}.png")
            if log is not None:
                log.write(json.dumps(record) + "\n")
            saved = bool(save_every and done % save_every == 0 and done < steps)
            if saved:
                last_path = checkpoint(done)
            if time_limit is not None and done < steps and _out_of_time(t_start, time_limit, ws, device):
                steps = done  # stop here: the last checkpoint is this step
                break
        if start < steps and not saved:
            last_path = checkpoint(steps)
        if own_group:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written the last checkpoint before any rank returns
    finally:
        if pbar is not None:
            pbar.close()
        if log is not None:
            log.close()
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    model.net.eval()
    return TrainResult(model=model, ema=ema, step=max(start, steps), losses=losses, checkpoint=last_path)


def _load_init(model: DiffusionModel, init, objective: str, net_cfg: UNetConfig, device) -> None:
    """Copy the weights of checkpoint ``init`` (EMA if present) into ``model`` (``train(init=...)``)."""
    ck = load_checkpoint(init, map_location=device, prediction_type=model.prediction_type)
    if ck.network_config != net_cfg:
        raise ValueError(f"init: {init} holds network {ck.network_config}, not the requested {net_cfg}")
    if ck.extra.get("objective", objective) != objective:
        raise ValueError(f"init: {init} was trained with objective {ck.extra['objective']!r}, "
                         f"not {objective!r}")
    model.net.load_state_dict(ck.ema if ck.ema is not None else ck.model.net.state_dict())


def _out_of_time(t_start: float, limit: float, ws: int, device: torch.device) -> bool:
    import time

    flag = torch.tensor([float(time.monotonic() - t_start > limit)], device=device)
    if ws > 1:
        import torch.distributed as dist

        dist.broadcast(flag, 0)  # every rank stops at the same step
    return bool(flag.item())


@torch.no_grad()
def validation_loss(model: DiffusionModel, dataset, objective: str, seed: int, batch_size: int,
                    device: torch.device, max_items: int = 64, hfs: HFSSDE | None = None) -> float:
    """Mean training loss over (up to ``max_items`` of) ``dataset`` with fixed noise."""
    was = model.net.training
    model.net.eval()
    g = step_generator(seed, 0, -1 & 0xFFFFFFFF, device)
    n = min(len(dataset), max_items)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        x0 = to_model_input(torch.stack([torch.as_tensor(dataset[j]) for j in range(i, min(n, i + batch_size))]).to(device),
                             model.in_channels)
        total += float(diffusion_loss(model, x0, objective, g, hfs)) * x0.shape[0]
        count += x0.shape[0]
    model.net.train(was)
    return total / count


@torch.no_grad()
def _sample_grid(model, ema, sampler, like, num, seed, path: Path) -> None:
    m = model
    if ema is not None:
        m = DiffusionModel(copy.deepcopy(model.net), model.schedule, model.prediction_type)
        m.net.load_state_dict(ema.shadow)
    m.net.eval()
    g = step_generator(seed, 0, 0xFFFF_FFFE, like.device)
    x_t = randn_like(like[:1].expand(num, *like.shape[1:]).contiguous(), g)
    _save_grid(sampler(m.eps_fn, x_t), path)
    model.net.train()
