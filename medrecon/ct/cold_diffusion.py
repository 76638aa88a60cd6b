"""Latent cold diffusion for low-dose CT (METHODS.md; Comput. Biol. Med. 2025, 110517, no public code).

With a frozen autoencoder E / D (``medrecon.ct.autoencoder``): z_0 = E(NDCT), z_T = E(LDCT).

- Degradation (no Gaussian noise): ``D(z_0, t) = sqrt(abar_t) z_0 + sqrt(1 - abar_t) z_T``,
  t = 0 .. T, with abar_0 = 1 (D is the identity) and abar_T = 0 (D(z_0, T) = z_T exactly).
  ``ColdSchedule`` holds abar_t: ``"cosine"`` (default) abar_t = cos^2(pi t / 2T), or
  ``"linear"`` abar_t = 1 - t / T, or any explicit table.  (The paper does not fix a schedule
  that we could read; a DDPM beta schedule cannot be used as is because its abar_T is not 0.)
- Network R(z_t, t) -> z0_hat: MONAI ``DiffusionModelUNet`` on the latent channels
  (``medrecon.models.networks.build_unet``), time-conditioned with t * 1000 / T so its sinusoidal
  embedding sees the same range as a 1000-step DDPM.
- Training loss: || R(D(z_0, t), t) - z_0 ||_1 (Bansal et al. 2022 use L1; ``loss="l2"``
  available), t uniform in {1, ..., T}.  Latents are encoded once up front (E is frozen).
- Sampling (Bansal et al. 2022, "Cold Diffusion", Algorithm 2): from z_T = E(LDCT),
  ``z_{s} = z_t - D(z0_hat, t) + D(z0_hat, s)`` with z0_hat = R(z_t, t), for t = T, ..., 1 and
  s = t - 1 (or a coarser descending grid with ``steps < T``), then decode D(z_0).  With a perfect
  predictor (z0_hat = z_0) every iterate equals D(z_0, s) and the result is z_0 exactly.
  ``algorithm="naive"`` is Algorithm 1 (z_s = D(z0_hat, s)), for comparison.  NFE = number of
  network calls (= steps).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from medrecon.models.networks import UNetConfig, build_unet, unet_config
from medrecon.models.padding import pad_to_multiple, required_multiple

from .autoencoder import CTAutoencoder, decode, encode
from .checkpoint import load_ct_state, read_ct_network, save_ct_checkpoint
from .data import pair_tensors
from .fit import check_steps, fit_pairs

__all__ = ["ColdSchedule", "degrade", "LatentColdDiffusion", "build_cold_model", "cold_loss",
           "cold_sample", "cold_timesteps", "ColdTrainResult", "train_cold_diffusion",
           "reconstruct_cold", "save_cold_diffusion", "load_cold_diffusion", "COLD_SCHEDULES"]

COLD_KIND = "ct-latent-cold-diffusion"
COLD_SCHEDULES = ("cosine", "linear")


class ColdSchedule:
    """abar_t for t = 0 .. T (float64, CPU), abar_0 = 1, abar_T = 0, non-increasing."""

    def __init__(self, T: int = 10, kind: str = "cosine", abar: Sequence[float] | torch.Tensor | None = None):
        if abar is None:
            if isinstance(T, bool) or not isinstance(T, int) or T < 1:
                raise ValueError(f"T: expected an integer number of cold steps >= 1, got {T!r}")
            t = torch.arange(T + 1, dtype=torch.float64) / T
            if kind == "cosine":
                a = torch.cos(0.5 * math.pi * t) ** 2
            elif kind == "linear":
                a = 1.0 - t
            else:
                raise ValueError(f"kind: expected one of {COLD_SCHEDULES} (or an explicit abar), got {kind!r}")
            a[0], a[-1] = 1.0, 0.0
        else:
            a = torch.as_tensor(abar, dtype=torch.float64).detach().cpu().clone()
            kind = "table"
            if a.ndim != 1 or len(a) < 2:
                raise ValueError(f"abar: expected a 1-D table of T + 1 >= 2 values, got shape {tuple(a.shape)}")
            if float(a[0]) != 1.0 or float(a[-1]) != 0.0:
                raise ValueError(f"abar: expected abar_0 = 1 and abar_T = 0, got {float(a[0])} and {float(a[-1])}")
            if bool((a[1:] > a[:-1]).any()) or bool((a < 0).any()) or bool((a > 1).any()):
                raise ValueError("abar: expected non-increasing values in [0, 1]")
        self.abar = a
        self.T = len(a) - 1
        self.kind = kind

    def to_dict(self) -> dict[str, Any]:
        return {"T": self.T, "kind": self.kind, "abar": [float(v) for v in self.abar]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColdSchedule":
        if not isinstance(d, dict) or "abar" not in d:
            raise ValueError(f"schedule: expected {{'T', 'kind', 'abar'}}, got {d!r}")
        s = cls(abar=d["abar"])
        s.kind = d.get("kind", "table")
        return s

    def coeffs(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) shaped to broadcast against ``like`` [B, ...]."""
        tt = torch.as_tensor(t).detach().cpu()
        if tt.is_floating_point():
            if bool((tt != tt.round()).any()):
                raise ValueError(f"t: cold-diffusion times are integers 0..{self.T}, got {tt.tolist()}")
            tt = tt.round()
        tt = tt.long()
        if bool((tt < 0).any()) or bool((tt > self.T).any()):
            raise ValueError(f"t: expected integers in [0, {self.T}], got {tt.tolist()}")
        a = self.abar[tt]
        if a.ndim == 0:
            a = a.expand(like.shape[0])
        elif a.shape != (like.shape[0],):
            raise ValueError(f"t: expected a scalar or shape [{like.shape[0]}], got {tuple(a.shape)}")
        shape = (-1,) + (1,) * (like.ndim - 1)
        dt = like.dtype
        return (a.sqrt().to(like.device, dt).reshape(shape),
                (1.0 - a).clamp_min(0).sqrt().to(like.device, dt).reshape(shape))


def degrade(z0: torch.Tensor, z_ldct: torch.Tensor, t, schedule: ColdSchedule) -> torch.Tensor:
    """D(z_0, t) = sqrt(abar_t) z_0 + sqrt(1 - abar_t) z_LDCT (t scalar or per-sample [B])."""
    if z0.shape != z_ldct.shape:
        raise ValueError(f"z0, z_ldct: shapes differ ({tuple(z0.shape)} vs {tuple(z_ldct.shape)})")
    a, b = schedule.coeffs(t, z0)
    return a * z0 + b * z_ldct


class LatentColdDiffusion(nn.Module):
    """R(z_t, t) -> z0_hat: a ``DiffusionModelUNet`` on the latent plus the cold schedule."""

    def __init__(self, net: nn.Module, schedule: ColdSchedule, network_config: UNetConfig) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.network_config = network_config

    @property
    def T(self) -> int:
        return self.schedule.T

    def net_time(self, t, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if bool((t < 1).any()) or bool((t > self.T).any()):
            raise ValueError(f"t: the network is queried at t in [1, {self.T}], got {t.tolist()}")
        return t * (1000.0 / self.T)

    def forward(self, z_t: torch.Tensor, t) -> torch.Tensor:
        c = self.network_config.in_channels
        if z_t.ndim != 4 or z_t.shape[1] != c:
            raise ValueError(f"z_t: expected a latent batch [B, {c}, h, w], got {tuple(z_t.shape)}")
        return self.net(z_t, self.net_time(t, z_t.shape[0], z_t.device))


def build_cold_model(config: UNetConfig | dict | str = "tiny", latent_channels: int | None = None,
                     T: int = 10, schedule: str | ColdSchedule = "cosine", seed: int | None = None) -> LatentColdDiffusion:
    """A fresh latent network; a preset name gets ``in/out_channels = latent_channels``."""
    if isinstance(config, str) and latent_channels is None:
        raise ValueError("latent_channels: required with a preset name")
    channels = {} if latent_channels is None else {"in_channels": int(latent_channels),
                                                  "out_channels": int(latent_channels)}
    cfg = unet_config(config, **channels)
    if cfg.in_channels != cfg.out_channels:
        raise ValueError(f"config: the latent network maps z_t to z_0, so in_channels ({cfg.in_channels}) "
                         f"must equal out_channels ({cfg.out_channels})")
    if latent_channels is not None and cfg.in_channels != latent_channels:
        raise ValueError(f"config: in_channels {cfg.in_channels} != latent_channels {latent_channels}")
    sched = schedule if isinstance(schedule, ColdSchedule) else ColdSchedule(T, schedule)
    return LatentColdDiffusion(build_unet(cfg, seed=seed), sched, cfg)


def cold_loss(model: LatentColdDiffusion, z0: torch.Tensor, z_ldct: torch.Tensor,
              generator: torch.Generator | None = None, loss: str = "l1") -> torch.Tensor:
    """|| R(D(z_0, t), t) - z_0 || (L1 or L2 mean), t uniform in {1..T} per sample."""
    t = torch.randint(1, model.T + 1, (z0.shape[0],), generator=generator, device=z0.device)
    pred = model(degrade(z0, z_ldct, t, model.schedule), t)
    d = pred - z0
    if loss == "l1":
        return d.abs().mean()
    if loss == "l2":
        return d.pow(2).mean()
    raise ValueError(f"loss: expected 'l1' or 'l2', got {loss!r}")


def cold_timesteps(T: int, steps: int | None = None) -> list[int]:
    """Descending integer grid T = t_0 > t_1 > ... > t_steps = 0 (all T steps by default)."""
    steps = T if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps: expected an int in [1, {T}], got {steps!r}")
    ts = torch.linspace(T, 0, steps + 1, dtype=torch.float64).round().long().tolist()
    return ts


@torch.no_grad()
def cold_sample(z0_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z_T: torch.Tensor,
                schedule: ColdSchedule, steps: int | None = None, algorithm: str = "improved",
                callback: Callable[[int, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, int]:
    """Cold-diffusion sampling from the degraded latent ``z_T`` (= E(LDCT)); returns (z_0, NFE).

    ``z0_fn(z_t, t)`` predicts z_0 (t a [B] long tensor).  ``algorithm="improved"`` is Bansal et al.
    Algorithm 2, ``"naive"`` Algorithm 1.  ``callback(t_next, z)`` sees every iterate.
    """
    if algorithm not in ("improved", "naive"):
        raise ValueError(f"algorithm: expected 'improved' or 'naive', got {algorithm!r}")
    if not isinstance(z_T, torch.Tensor) or z_T.ndim < 2 or z_T.is_complex():
        raise ValueError(f"z_T: expected a real latent batch [B, C, h, w], got {getattr(z_T, 'shape', z_T)}")
    ts = cold_timesteps(schedule.T, steps)
    z = z_T
    nfe = 0
    for t, s in zip(ts[:-1], ts[1:]):
        tb = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
        z0_hat = z0_fn(z, tb)
        nfe += 1
        if z0_hat.shape != z.shape:
            raise ValueError(f"z0_fn: returned shape {tuple(z0_hat.shape)}, expected {tuple(z.shape)}")
        if algorithm == "improved":
            z = z - degrade(z0_hat, z_T, t, schedule) + degrade(z0_hat, z_T, s, schedule)
        else:
            z = degrade(z0_hat, z_T, s, schedule)
        if callback is not None:
            callback(s, z)
    return z, nfe


@dataclass
class ColdTrainResult:
    model: LatentColdDiffusion
    losses: list[float]
    seconds: float  # optimisation time (latent encoding excluded; see encode_seconds)
    encode_seconds: float = 0.0
    ema: Any = None
    checkpoint: Path | None = None


def train_cold_diffusion(config: UNetConfig | dict | str | LatentColdDiffusion, autoencoder: CTAutoencoder,
                         data, *, T: int = 10, schedule: str | ColdSchedule = "cosine", steps: int = 500,
                         batch_size: int = 8, lr: float = 5e-4, loss: str = "l1",
                         ema_decay: float | None = None, grad_clip: float | None = 1.0, seed: int = 0,
                         device: str | torch.device = "cpu", out_dir: str | os.PathLike | None = None,
                         overwrite: bool = False, progress: bool = False, start_step: int = 0,
                         ema_state: dict | None = None, extra: dict | None = None) -> ColdTrainResult:
    """Train the latent z0-predictor on (NDCT, LDCT) pairs with the frozen ``autoencoder``.

    ``data``: a ``CTPairDataset``, a (ndct, ldct) tensor pair ``[S, 1, H, W]`` or a dataset of pairs.
    With ``out_dir`` the trained model is saved there (``save_cold_diffusion``; EMA weights too,
    ``extra`` in its JSON).  To continue a run pass the loaded model, ``start_step`` and
    ``ema_state`` (see ``medrecon.ct.fit``).
    """
    import time

    check_steps(steps, batch_size)
    device = torch.device(device)
    nd, ld = pair_tensors(data)
    autoencoder.to(device).eval()
    t0 = time.perf_counter()
    z0_all = encode(autoencoder, nd.to(device))
    zT_all = encode(autoencoder, ld.to(device))
    enc_s = time.perf_counter() - t0
    if isinstance(config, LatentColdDiffusion):
        model = config
    else:
        model = build_cold_model(config, autoencoder.latent_channels, T, schedule, seed=seed)
    if model.network_config.in_channels != autoencoder.latent_channels:
        raise ValueError(f"model: the latent network has {model.network_config.in_channels} channels, the "
                         f"autoencoder's latent {autoencoder.latent_channels}")
    f = model.network_config.downsample_factor
    if z0_all.shape[-1] % f or z0_all.shape[-2] % f:
        raise ValueError(f"data: latent size {tuple(z0_all.shape[-2:])} is not a multiple of the latent "
                         f"network's downsampling {f}")
    model.to(device)
    res, path = fit_pairs(
        model, z0_all, zT_all, lambda z0, zT, g: cold_loss(model, z0, zT, g, loss),
        save_cold_diffusion, batch_size=batch_size, steps=steps, lr=lr, seed=seed, device=device,
        ema_decay=ema_decay, grad_clip=grad_clip, progress=progress, start_step=start_step,
        ema_state=ema_state, out_dir=out_dir, overwrite=overwrite, extra=extra)
    return ColdTrainResult(model, res.losses, res.seconds, enc_s, res.ema, path)


@torch.no_grad()
def reconstruct_cold(model: LatentColdDiffusion, autoencoder: CTAutoencoder, ldct: torch.Tensor,
                     steps: int | None = None, algorithm: str = "improved",
                     decoder_residual: bool = False) -> tuple[torch.Tensor, int]:
    """Denoise normalised LDCT images ``[B, 1, H, W]``: E -> cold sampling -> D; returns (image, NFE).

    ``decoder_residual`` (our departure from the paper, off by default): add the autoencoder's
    own reconstruction error of the input back, ``D(z0_hat) + (x - D(E(x)))``.  Where D(E(.))
    misses a structure of the input and the target alike (the bright one-pixel ring where a
    zoomed slice is cut by the FOV circle), its error is nearly the same for both and cancels;
    elsewhere the residual is the part of the LDCT the autoencoder could not reproduce (fine
    noise), returned unchanged.  One more decode; NFE counts the latent network only.
    Measured in docs/priors.md (the CT section)."""
    if not isinstance(ldct, torch.Tensor) or ldct.ndim != 4 or ldct.shape[1] != 1:
        raise ValueError(f"ldct: expected a real tensor [B, 1, H, W], got {tuple(getattr(ldct, 'shape', ()))}")
    was = model.training
    model.eval()
    # any H, W: reflect-padded to the multiple of E's and R's downsampling, cropped back (models.padding)
    x, crop = pad_to_multiple(ldct, required_multiple(autoencoder) * required_multiple(model), what="ldct")
    z_T = encode(autoencoder, x)
    z0, nfe = cold_sample(model, z_T, model.schedule, steps, algorithm)
    model.train(was)
    out = decode(autoencoder, z0)
    if decoder_residual:
        out = out + (x - decode(autoencoder, z_T))
    return crop(out), nfe


def save_cold_diffusion(directory: str | os.PathLike, model: LatentColdDiffusion, *,
                        ema: dict[str, torch.Tensor] | None = None, step: int = 0,
                        overwrite: bool = False, extra: dict | None = None) -> Path:
    """Checkpoint: UNet config + cold schedule (abar table) in JSON, weights (and EMA) in safetensors."""
    weights = {"model": model.net.state_dict()}
    if ema is not None:
        weights["ema"] = ema
    return save_ct_checkpoint(directory, COLD_KIND,
                              {"network": {"type": "monai.DiffusionModelUNet",
                                           "config": model.network_config.to_dict()},
                               "schedule": model.schedule.to_dict(), "prediction": "z0",
                               "time_input": "t * 1000 / T"},
                              weights, step=step, extra=extra, overwrite=overwrite)


def load_cold_diffusion(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        use_ema: bool = True) -> LatentColdDiffusion:
    """Rebuild a saved latent cold-diffusion model (EMA weights when saved and ``use_ema``), eval mode."""
    (ncfg, sched), cfg, weights = read_ct_network(
        directory, COLD_KIND, "monai.DiffusionModelUNet", "latent cold-diffusion",
        lambda net, c: (UNetConfig.from_dict(net), ColdSchedule.from_dict(c["schedule"])))
    model = LatentColdDiffusion(build_unet(ncfg), sched, ncfg)
    key = "ema" if use_ema and "ema" in weights else "model"
    load_ct_state(model.net, directory, cfg, weights, key)
    return model.to(map_location).eval()
