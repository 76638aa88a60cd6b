"""The CT autoencoder network: MONAI ``AutoencoderKL`` built from a JSON-able ``AEConfig``.

MONAI 1.6.1's ``monai.networks.nets.AutoencoderKL(spatial_dims, in_channels, out_channels,
num_res_blocks, channels, attention_levels, latent_channels, norm_num_groups, norm_eps,
with_encoder_nonlocal_attn, with_decoder_nonlocal_attn, ...)`` is built from ``AEConfig`` (not
hand-written).  Each level after the first halves H and W, so the latent is
``[B, latent_channels, H / f, W / f]`` with ``f = 2 ** (len(channels) - 1)``.

Presets: ``"tiny"`` (channels (8, 16), 2 latent channels, ~15k parameters, f = 2; tests) and
``"small"`` (channels (32, 64, 64), 4 latent channels, ~0.5M parameters, f = 4; CPU demo at
64x64 / 128x128) and ``"wide2"`` (channels (32, 64), 4 latent channels, f = 2: no compression, so a
CPU-trained autoencoder reconstructs below the low-dose noise; the shipped ``ct128-latent-cold``).  No attention in either (CPU budget).  Training, encoding and checkpoints:
`medrecon.ct.autoencoder`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn

from medrecon.models.networks import check_levels

__all__ = ["AEConfig", "AE_PRESETS", "ae_preset", "CTAutoencoder", "build_autoencoder"]


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
        check_levels(self, ("channels", "num_res_blocks", "attention_levels"))
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
    "wide2": AEConfig(channels=(32, 64), num_res_blocks=(1, 1), attention_levels=(False, False),
                      latent_channels=4, norm_num_groups=16),
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
