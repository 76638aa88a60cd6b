"""The baseline latent cold diffusion claims to beat: a pixel-space conditional DDPM denoiser.

Model: MONAI ``DiffusionModelUNet`` (``medrecon.models.networks``) with 2 input channels
``[x_t, LDCT]`` (the LDCT image, normalised as ``medrecon.ct.data``, concatenated as an extra
channel) and 1 output channel, predicting eps on a VP schedule (default: DDPM linear betas,
1000 training steps; Ho et al. 2020, Eq. 14 loss ||eps_theta([x_t, LDCT], t) - eps||^2).

Sampling goes through the diffusion core's single entry point ``medrecon.sample.sample`` with
the closure ``eps_fn(x, t) = net(cat([x, LDCT]), t)``: any solver there (1000-step DDPM or DDIM,
50-step DDIM, 20-step DPM-Solver++, ...), x_T ~ N(0, I) from an explicit generator.  NFE is
counted by the closure.

Checkpoints use the existing mechanism (``medrecon.models.checkpoint``): the network is a
``DiffusionModelUNet`` with in_channels = 2, out_channels = 1 on a VP schedule, which that format
describes exactly; ``extra`` records ``kind = "ct-pixel-ddpm"`` and the conditioning, and
``load_pixel_ddpm`` refuses other checkpoints.  (Loaded with plain ``load_model`` it would be an
unconditional DiffusionModel with mismatched channels: use ``load_pixel_ddpm``.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from medrecon.models.checkpoint import load_checkpoint, save_checkpoint
from medrecon.models.networks import UNetConfig, build_unet, unet_config
from medrecon.models.padding import padded
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel

from .data import pair_tensors
from .fit import check_steps, fit_pairs

__all__ = ["ConditionalDDPM", "build_pixel_ddpm", "ddpm_loss", "train_pixel_ddpm", "PixelTrainResult",
           "conditional_eps_fn", "sample_pixel_ddpm", "save_pixel_ddpm", "load_pixel_ddpm"]

PIXEL_KIND = "ct-pixel-ddpm"


class ConditionalDDPM(nn.Module):
    """eps_theta([x_t, cond], t): a 2-in / 1-out ``DiffusionModelUNet`` and its training betas."""

    def __init__(self, net: nn.Module, betas: torch.Tensor, network_config: UNetConfig) -> None:
        super().__init__()
        if network_config.in_channels != 2 * network_config.out_channels:
            raise ValueError(f"config: a conditional denoiser needs in_channels = 2 x out_channels "
                             f"(image + LDCT), got {network_config.in_channels} / {network_config.out_channels}")
        self.net = net
        self.schedule = VPSchedule(betas)
        self.betas = self.schedule.betas
        self.network_config = network_config

    @property
    def channels(self) -> int:
        return self.network_config.out_channels

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        c = self.channels
        if x_t.ndim != 4 or x_t.shape[1] != c or x_t.is_complex():
            raise ValueError(f"x_t: expected a real batch [B, {c}, H, W], got {x_t.dtype} {tuple(x_t.shape)}")
        if cond.shape != x_t.shape:
            raise ValueError(f"cond: LDCT shape {tuple(cond.shape)} differs from the image shape {tuple(x_t.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.net(torch.cat([x_t, cond.to(x_t.dtype)], 1), t)

    def as_diffusion_model(self) -> DiffusionModel:
        """The same network as a (2-channel-input) ``DiffusionModel``, for checkpoint I/O."""
        return DiffusionModel(self.net, self.schedule, "eps", network_config=self.network_config)


def build_pixel_ddpm(config: UNetConfig | dict | str = "tiny", betas: torch.Tensor | None = None,
                     seed: int | None = None) -> ConditionalDDPM:
    """A fresh conditional denoiser; a preset name gets in_channels = 2, out_channels = 1."""
    cfg = unet_config(config, in_channels=2, out_channels=1)
    betas = make_betas("linear", 1000) if betas is None else betas
    return ConditionalDDPM(build_unet(cfg, seed=seed), betas, cfg)


def ddpm_loss(model: ConditionalDDPM, x0: torch.Tensor, cond: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """||eps_theta([sqrt(abar) x0 + sqrt(1 - abar) eps, cond], t) - eps||^2, t uniform in 0..N-1."""
    n = model.schedule.num_train_timesteps
    t = torch.randint(0, n, (x0.shape[0],), generator=generator, device=x0.device)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    tc = t.cpu()
    a = model.schedule.alpha(tc).to(x0.device, x0.dtype).reshape(shape)
    s = model.schedule.sigma(tc).to(x0.device, x0.dtype).reshape(shape)
    return (model(a * x0 + s * z, t, cond) - z).pow(2).mean()


@dataclass
class PixelTrainResult:
    model: ConditionalDDPM
    losses: list[float]
    seconds: float
    ema: Any = None
    checkpoint: Path | None = None


def train_pixel_ddpm(config: UNetConfig | dict | str | ConditionalDDPM, data, *, steps: int = 500,
                     batch_size: int = 8, lr: float = 5e-4, betas: torch.Tensor | None = None,
                     ema_decay: float | None = None, grad_clip: float | None = 1.0, seed: int = 0,
                     device: str | torch.device = "cpu", out_dir: str | os.PathLike | None = None,
                     overwrite: bool = False, progress: bool = False, start_step: int = 0,
                     ema_state: dict | None = None, extra: dict | None = None) -> PixelTrainResult:
    """Train the conditional denoiser on (NDCT, LDCT) pairs (``CTPairDataset``, a tensor pair or a
    dataset of pairs).  With ``out_dir`` it is saved there (``save_pixel_ddpm``, EMA too, ``extra``
    in its JSON).  To continue a run pass the loaded model, ``start_step`` and ``ema_state``."""
    check_steps(steps, batch_size)
    device = torch.device(device)
    nd, ld = pair_tensors(data)
    nd, ld = nd.to(device), ld.to(device)
    model = config if isinstance(config, ConditionalDDPM) else build_pixel_ddpm(config, betas, seed=seed)
    model.to(device)
    f = model.network_config.downsample_factor
    if nd.shape[-1] % f or nd.shape[-2] % f:
        raise ValueError(f"data: image size {tuple(nd.shape[-2:])} is not a multiple of the network's "
                         f"downsampling {f}")
    res, path = fit_pairs(
        model, nd, ld, lambda x0, ldct, g: ddpm_loss(model, x0, ldct, g), save_pixel_ddpm,
        batch_size=batch_size, steps=steps, lr=lr, seed=seed, device=device, ema_decay=ema_decay,
        grad_clip=grad_clip, progress=progress, start_step=start_step, ema_state=ema_state,
        out_dir=out_dir, overwrite=overwrite, extra=extra)
    return PixelTrainResult(model, res.losses, res.seconds, res.ema, path)


class _CountingEps:
    """eps_theta([x, cond], t), counting network calls; with ``ldct_above = t_c`` the timesteps
    t >= t_c get eps = (x - sqrt(abar_t) cond) / sqrt(1 - abar_t), i.e. x0 estimate = cond,
    without a network call."""

    def __init__(self, model: ConditionalDDPM, cond: torch.Tensor, ldct_above: int | None = None) -> None:
        self.model, self.cond, self.nfe = model, cond, 0
        self.ldct_above = ldct_above
        if ldct_above is not None:
            from medrecon.sample import alphas_cumprod

            self.acp = alphas_cumprod(model.betas)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        cond = self.cond.to(x.device)
        if self.ldct_above is not None:
            tt = torch.as_tensor(t).detach().cpu().double().reshape(-1)
            if bool((tt != tt.round()).any()):
                raise ValueError("ldct_above needs a solver with integer timesteps (ddpm, ddim, "
                                 "dpm-solver++, unipc, pndm)")
            if int(tt.max()) >= self.ldct_above:
                a = float(self.acp[int(tt.max())])
                return (x - a ** 0.5 * cond.to(x.dtype)) / (1.0 - a) ** 0.5
        self.nfe += 1
        with torch.no_grad():  # any H, W: reflect-padded to the U-Net's multiple, cropped back
            return padded(self.model, self.model)(x, t, cond)


def conditional_eps_fn(model: ConditionalDDPM, ldct: torch.Tensor,
                       ldct_above: int | None = None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``eps_fn(x, t)`` for ``medrecon.sample.sample``: concatenates ``ldct`` as the extra channel.
    The returned callable counts its network calls in ``.nfe`` (see ``sample_pixel_ddpm`` for
    ``ldct_above``)."""
    return _CountingEps(model, ldct, ldct_above)


@torch.no_grad()
def sample_pixel_ddpm(model: ConditionalDDPM, ldct: torch.Tensor, solver: str = "ddim", steps: int = 50,
                      generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                      clip_x0: float | None = None, ldct_above: int | None = None,
                      **solver_options) -> tuple[torch.Tensor, int]:
    """Denoise normalised LDCT ``[B, 1, H, W]`` with ``medrecon.sample.sample``; returns (image, NFE).

    E.g. ``solver="ddpm", steps=1000``; ``"ddim", 50``; ``"dpm-solver++", 20``.  ``x_T`` defaults to
    N(0, I) noise drawn from ``generator`` on ldct's device.  ``clip_x0=B`` clips every x0 estimate
    to [-B, B] (HU / 1000; e.g. 2 = +-2000 HU) through the solvers' ``dc`` hook, which recomputes
    eps from the clipped x0 (diffusers' ``clip_sample``): it keeps the deterministic solvers of an
    under-trained model from diverging (docs/bench_ct.md, "Why DDIM eta=0 diverges").
    ``ldct_above=t_c``: at timesteps t >= t_c the x0 estimate is the LDCT itself and the network
    is not called (NFE counts only real calls).  Deterministic solvers then start, in effect,
    from the diffused LDCT at t_c (CCDF / SDEdit-style warm start), which bypasses the
    under-trained model's eps errors at large t that make DDIM eta=0 and DPM-Solver++ diverge.
    """
    from medrecon.sample import sample

    if not isinstance(ldct, torch.Tensor) or ldct.ndim != 4 or ldct.shape[1] != model.channels or ldct.is_complex():
        raise ValueError(f"ldct: expected a real tensor [B, {model.channels}, H, W], got "
                         f"{tuple(getattr(ldct, 'shape', ()))}")
    if x_T is None:
        x_T = torch.randn(ldct.shape, generator=generator, device=ldct.device, dtype=ldct.dtype)
    elif x_T.shape != ldct.shape:
        raise ValueError(f"x_T: shape {tuple(x_T.shape)} differs from ldct {tuple(ldct.shape)}")
    was = model.training
    model.eval()
    if ldct_above is not None and (isinstance(ldct_above, bool) or int(ldct_above) != ldct_above
                                   or int(ldct_above) < 0):
        raise ValueError(f"ldct_above: expected a timestep >= 0, got {ldct_above!r}")
    eps_fn = conditional_eps_fn(model, ldct, None if ldct_above is None else int(ldct_above))
    if clip_x0 is not None:
        b = float(clip_x0)
        if not b > 0:
            raise ValueError(f"clip_x0: expected a positive bound (HU / 1000), got {clip_x0!r}")
        user_dc = solver_options.pop("dc", None)

        def dc(x0, t, b=b, user_dc=user_dc):
            x0 = x0.clamp(-b, b)
            return user_dc(x0, t) if user_dc is not None else x0
        solver_options["dc"] = dc
    out = sample(eps_fn, x_T, solver=solver, steps=steps, betas=model.betas, generator=generator,
                 **solver_options)
    model.train(was)
    return out, eps_fn.nfe


def save_pixel_ddpm(directory: str | os.PathLike, model: ConditionalDDPM, *,
                    ema: dict[str, torch.Tensor] | None = None, step: int = 0, overwrite: bool = False,
                    extra: dict | None = None) -> Path:
    """Checkpoint through ``medrecon.models.checkpoint.save_checkpoint`` (safetensors + JSON);
    ``extra`` (JSON-able) is stored in its ``extra`` entry next to the kind and conditioning."""
    return save_checkpoint(directory, model.as_diffusion_model(),
                           {**(extra or {}), "network": model.network_config, "kind": PIXEL_KIND,
                            "condition": "ldct concatenated as input channel(s) after x_t",
                            "normalization": "HU / 1000"},
                           ema=ema, step=step, overwrite=overwrite)


def load_pixel_ddpm(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                    use_ema: bool = True) -> ConditionalDDPM:
    """Load a ``save_pixel_ddpm`` checkpoint (EMA weights when saved and ``use_ema``), eval mode."""
    ck = load_checkpoint(directory, map_location="cpu", prediction_type="eps")
    file = Path(directory) / "config.json"
    if ck.extra.get("kind") != PIXEL_KIND:
        raise ValueError(f"{file}: not a conditional CT pixel DDPM checkpoint (extra.kind "
                         f"{ck.extra.get('kind')!r}, expected {PIXEL_KIND!r})")
    betas = getattr(ck.model.schedule, "betas", None)
    if betas is None:
        raise ValueError(f"{file}: expected a VP schedule")
    model = ConditionalDDPM(ck.model.net, betas, ck.network_config)
    if use_ema and ck.ema is not None:
        model.net.load_state_dict({k: v.to("cpu") for k, v in ck.ema.items()})
    return model.to(map_location).eval()
