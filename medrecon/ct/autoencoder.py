"""The CT autoencoder E / D of latent cold diffusion: MONAI ``AutoencoderKL`` from a JSON-able config.

MONAI 1.6.1's ``monai.networks.nets.AutoencoderKL(spatial_dims, in_channels, out_channels,
num_res_blocks, channels, attention_levels, latent_channels, norm_num_groups, norm_eps,
with_encoder_nonlocal_attn, with_decoder_nonlocal_attn, ...)`` is built from ``AEConfig`` (not
hand-written).  Each level after the first halves H and W, so the latent is
``[B, latent_channels, H / f, W / f]`` with ``f = 2 ** (len(channels) - 1)``.

Presets: ``"tiny"`` (channels (8, 16), 2 latent channels, ~15k parameters, f = 2; tests) and
``"small"`` (channels (32, 64, 64), 4 latent channels, ~0.5M parameters, f = 4; CPU demo at
64x64 / 128x128).  No attention in either (CPU budget).

Training (``train_autoencoder``): L1 reconstruction + ``kl_weight`` x KL(q(z|x) || N(0, I))
(KL summed over latent elements, averaged over the batch, MONAI tutorials' convention;
reparameterised sample drawn with the step generator).  The perceptual (LPIPS) and adversarial
losses of the LDM recipe are skipped (documented deviation: no pretrained perceptual network
offline, and CPU budget).  By default it trains on NDCT and LDCT slices together, since both are
encoded (z_0 = E(NDCT), z_T = E(LDCT)).

Encoding is deterministic: ``encode`` returns the posterior mean times ``scale_factor``
(LDM's latent scaling, set after training to 1 / std of the training NDCT latents so the latent
network sees unit-scale inputs); ``decode`` divides it back out.  ``freeze`` turns off gradients.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import check_state, read_ct_checkpoint, save_ct_checkpoint
from .data import pair_tensors
from .fit import FitResult, check_steps, fit

__all__ = ["AEConfig", "AE_PRESETS", "ae_preset", "CTAutoencoder", "build_autoencoder",
           "ae_loss", "train_autoencoder", "AETrainResult", "freeze", "encode", "decode",
           "save_autoencoder", "load_autoencoder"]

AE_KIND = "ct-autoencoder-kl"


@dataclass(frozen=True)
class AEConfig:
    """Arguments of MONAI's ``AutoencoderKL`` that medrecon exposes."""

    channels: tuple[int, ...] = (8, 16)
    num_res_blocks: tuple[int, ...] = (1, 1)
    attention_levels: tuple[bool, ...] = (False, False)
    latent_channels: int = 2
    norm_num_groups: int = 8
    norm_eps: float = 1e-6
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    in_channels: int = 1
    out_channels: int = 1
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        for name in ("channels", "num_res_blocks", "attention_levels"):
            val = getattr(self, name)
            if isinstance(val, int) and name == "num_res_blocks":
                val = (val,) * len(self.channels)
            if not isinstance(val, (list, tuple)):
                raise ValueError(f"AEConfig.{name}: expected a list, got {val!r}")
            object.__setattr__(self, name, tuple(val))
        n = len(self.channels)
        if n < 1 or any(int(c) <= 0 for c in self.channels):
            raise ValueError(f"AEConfig.channels: expected positive widths, got {self.channels}")
        for name in ("num_res_blocks", "attention_levels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"AEConfig.{name}: expected {n} entries (one per level of "
                                 f"channels={self.channels}), got {getattr(self, name)}")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"AEConfig.norm_num_groups={self.norm_num_groups} must divide every "
                             f"entry of channels={self.channels}")
        if int(self.latent_channels) < 1:
            raise ValueError(f"AEConfig.latent_channels: expected >= 1, got {self.latent_channels}")
        if self.spatial_dims != 2:
            raise ValueError(f"AEConfig.spatial_dims: only 2-D slices are supported, got {self.spatial_dims}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AEConfig":
        if not isinstance(d, dict):
            raise ValueError(f"AEConfig.from_dict: expected a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"AEConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


AE_PRESETS: dict[str, AEConfig] = {
    "tiny": AEConfig(),
    "small": AEConfig(channels=(32, 64, 64), num_res_blocks=(1, 1, 1),
                      attention_levels=(False, False, False), latent_channels=4, norm_num_groups=16),
}


def ae_preset(name: str, **overrides: Any) -> AEConfig:
    if name not in AE_PRESETS:
        raise ValueError(f"ae_preset: unknown name {name!r}; expected one of {sorted(AE_PRESETS)}")
    return AEConfig.from_dict({**AE_PRESETS[name].to_dict(), **overrides})


def _as_config(config: AEConfig | dict | str) -> AEConfig:
    if isinstance(config, str):
        return ae_preset(config)
    if isinstance(config, dict):
        return AEConfig.from_dict(config)
    if isinstance(config, AEConfig):
        return config
    raise ValueError(f"config: expected AEConfig, dict or preset name, got {type(config).__name__}")


class CTAutoencoder(nn.Module):
    """MONAI ``AutoencoderKL`` + its config + the latent ``scale_factor``."""

    def __init__(self, config: AEConfig | dict | str = "tiny", scale_factor: float = 1.0) -> None:
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        cfg = _as_config(config)
        self.config = cfg
        self.scale_factor = float(scale_factor)
        self.net = AutoencoderKL(
            spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            num_res_blocks=list(cfg.num_res_blocks), channels=list(cfg.channels),
            attention_levels=list(cfg.attention_levels), latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
            with_encoder_nonlocal_attn=cfg.with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=cfg.with_decoder_nonlocal_attn)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def _check(self, x: torch.Tensor) -> None:
        f = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.is_complex():
            raise ValueError(f"x: expected a real image batch [B, {self.config.in_channels}, H, W], "
                             f"got {x.dtype} {tuple(x.shape)}")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"x: H and W must be multiples of {f} (the autoencoder's downsampling), "
                             f"got {tuple(x.shape[-2:])}")

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma) of q(z | x), unscaled."""
        self._check(x)
        return self.net.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent: posterior mean x ``scale_factor``."""
        return self.posterior(x)[0] * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"z: expected a latent batch [B, {self.latent_channels}, h, w], got {tuple(z.shape)}")
        return self.net.decode(z / self.scale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_autoencoder(config: AEConfig | dict | str = "tiny", seed: int | None = None) -> CTAutoencoder:
    """A fresh ``CTAutoencoder``; with ``seed`` the weights come from it (global RNG untouched)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return CTAutoencoder(config)
    return CTAutoencoder(config)


def ae_loss(ae: CTAutoencoder, x: torch.Tensor, kl_weight: float = 1e-6,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """L1(D(z), x) + kl_weight * KL, z = mu + sigma * n (reparameterised, n from ``generator``)."""
    mu, sigma = ae.posterior(x)
    n = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    rec = ae.net.decode(mu + sigma * n)
    l1 = (rec - x).abs().mean()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1).mean()
    return l1 + kl_weight * kl


@dataclass
class AETrainResult:
    autoencoder: CTAutoencoder
    losses: list[float]
    seconds: float
    checkpoint: Path | None = None


def _images(data, use_ldct: bool) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        x = data
    else:
        nd, ld = pair_tensors(data)
        x = torch.cat([nd, ld]) if use_ldct else nd
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] < 1 or x.is_complex():
        raise ValueError(f"data: expected images [S, 1, H, W] or a dataset of (ndct, ldct) pairs, "
                         f"got {tuple(x.shape)}")
    return x.float()


def train_autoencoder(config: AEConfig | dict | str | CTAutoencoder, data, *, steps: int = 500,
                      batch_size: int = 8, lr: float = 1e-3, kl_weight: float = 1e-6,
                      use_ldct: bool = True, scale_latents: bool = True, grad_clip: float | None = 1.0,
                      seed: int = 0, device: str | torch.device = "cpu",
                      out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                      progress: bool = False, start_step: int = 0,
                      extra: dict | None = None) -> AETrainResult:
    """Train an autoencoder on CT slices and freeze it.

    ``data``: a ``CTPairDataset``, a (ndct, ldct) tensor pair or any dataset of (ndct, ldct) pairs
    (both are used when ``use_ldct``), or one image tensor ``[S, 1, H, W]``.  With ``out_dir`` the frozen model is saved
    there (``save_autoencoder``, with ``extra`` in its JSON).  Returns the autoencoder (eval mode,
    frozen), losses and time.  To continue a run pass the loaded ``CTAutoencoder`` and
    ``start_step`` (its trainable weights are switched back on).
    """
    check_steps(steps, batch_size)
    device = torch.device(device)
    ae = config if isinstance(config, CTAutoencoder) else build_autoencoder(config, seed=seed)
    ae.to(device)
    ae.requires_grad_(True)
    x_all = _images(data, use_ldct).to(device)
    ae._check(x_all[:1])

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=g, device=device)
        return ae_loss(ae, x_all[idx], kl_weight, g)

    res: FitResult = fit(ae.net, loss_fn, steps=steps, lr=lr, seed=seed, device=device,
                         grad_clip=grad_clip, progress=progress, start_step=start_step)
    if scale_latents:
        with torch.no_grad():
            nd = _images(data, False).to(device)
            mu = torch.cat([ae.posterior(nd[i:i + 64])[0] for i in range(0, nd.shape[0], 64)])
            std = float(mu.std())
        ae.scale_factor = 1.0 / std if std > 1e-8 else 1.0
    freeze(ae)
    path = None
    if out_dir is not None:
        path = save_autoencoder(out_dir, ae, step=int(start_step) + steps, overwrite=overwrite,
                                extra=extra)
    return AETrainResult(ae, res.losses, res.seconds, path)


def freeze(ae: CTAutoencoder) -> CTAutoencoder:
    """Eval mode and no gradients (the autoencoder is fixed while the latent network trains)."""
    ae.eval()
    ae.requires_grad_(False)
    return ae


@torch.no_grad()
def encode(ae: CTAutoencoder, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """E(x) in batches, without gradients."""
    return torch.cat([ae.encode(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def decode(ae: CTAutoencoder, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """D(z) in batches, without gradients."""
    return torch.cat([ae.decode(z[i:i + batch_size]) for i in range(0, z.shape[0], batch_size)])


def save_autoencoder(directory: str | os.PathLike, ae: CTAutoencoder, *, step: int = 0,
                     overwrite: bool = False, extra: dict | None = None) -> Path:
    """Checkpoint (``medrecon.ct.checkpoint`` layout): config + scale_factor in JSON, weights in safetensors."""
    return save_ct_checkpoint(directory, AE_KIND,
                              {"network": {"type": "monai.AutoencoderKL", "config": ae.config.to_dict()},
                               "scale_factor": ae.scale_factor},
                              {"model": ae.net.state_dict()}, step=step, extra=extra, overwrite=overwrite)


def load_autoencoder(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> CTAutoencoder:
    """Rebuild and load a saved autoencoder (frozen, eval mode)."""
    cfg, weights = read_ct_checkpoint(directory, AE_KIND)
    file = Path(directory) / "config.json"
    net = cfg["config"].get("network", {})
    if net.get("type") != "monai.AutoencoderKL":
        raise ValueError(f"{file}: unknown network type {net.get('type')!r}")
    try:
        ae = CTAutoencoder(AEConfig.from_dict(net["config"]), float(cfg["config"]["scale_factor"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{file}: invalid autoencoder config ({exc})") from None
    check_state(ae.net.state_dict(), weights["model"], Path(directory) / cfg["files"]["model"])
    ae.net.load_state_dict(weights["model"])
    return freeze(ae.to(map_location))
