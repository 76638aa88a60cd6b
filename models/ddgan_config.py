"""The JSON-able configuration of the denoising diffusion GAN (`medrecon.models.ddgan`): its
generator U-Net, T-step schedule, latent sizes and discriminator widths."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .networks import UNetConfig, unet_config

__all__ = ["DDGANConfig"]


@dataclass(frozen=True)
class DDGANConfig:
    """Everything needed to rebuild generator, discriminator and schedule (JSON round trip)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    num_steps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    eps_small: float = 1e-3
    z_dim: int = 32
    w_dim: int = 64
    mapping_layers: int = 2
    d_channels: tuple[int, ...] = (32, 64, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unet", unet_config(self.unet, "DDGANConfig.unet"))
        object.__setattr__(self, "d_channels", tuple(int(c) for c in self.d_channels))
        if not 1 <= int(self.num_steps) <= 16:
            raise ValueError(f"DDGANConfig.num_steps: expected 1..16 (the method uses 2..8), got {self.num_steps}")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(f"DDGANConfig: expected 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        for name in ("z_dim", "w_dim", "mapping_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DDGANConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if not self.d_channels or min(self.d_channels) < 1:
            raise ValueError(f"DDGANConfig.d_channels: expected positive widths, got {self.d_channels}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        d["d_channels"] = list(self.d_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DDGANConfig":
        if not isinstance(d, dict):
            raise ValueError(f"DDGANConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DDGANConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "unet" in d:
            d["unet"] = UNetConfig.from_dict(d["unet"]) if isinstance(d["unet"], dict) else d["unet"]
        return cls(**d)
