"""What the training loops share (`train`, `ddgan_train`, `medrecon.ct.fit`): the EMA of the
weights, the per-step generator that makes a resumed run continue bit-for-bit, the run's
``step-XXXXXXXX`` checkpoint folders, and dataset batches turned into model input."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["EMA", "step_generator", "latest_checkpoint", "CHECKPOINT_NAME", "to_model_input",
           "randn_like"]

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")  # a run's checkpoint folders in out_dir


class EMA:
    """Exponential moving average of a module's floating-point state:
    shadow <- decay * shadow + (1 - decay) * current  (integer buffers are copied)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: expected 0 <= decay < 1, got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for one training step: depends only on (seed, rank, step)."""
    state = np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator(device=device)
    g.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The ``step-XXXXXXXX`` checkpoint with the highest step in ``out_dir`` (complete ones only)."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and (p / "config.json").is_file()]
    return max(found)[1] if found else None


def to_model_input(batch: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stacked dataset items -> complex [B, H, W] (2-channel nets) or real [B, C, H, W]."""
    if batch.is_complex():
        if batch.ndim == 4 and batch.shape[1] == 1:
            batch = batch[:, 0]
        if batch.ndim != 3:
            raise ValueError(f"dataset: expected complex items [H, W], got batch {tuple(batch.shape)}")
        return batch.to(torch.complex64)
    if batch.ndim == 3 and in_channels == 1:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] != in_channels:
        raise ValueError(
            f"dataset: expected items [{in_channels}, H, W] (real) or [H, W] (complex), "
            f"got batch {tuple(batch.shape)}"
        )
    batch = batch.float()
    if in_channels == 2:
        return torch.view_as_complex(batch.permute(0, 2, 3, 1).contiguous())
    return batch


def randn_like(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise shaped like ``x``: circular CN(0, I) (E|z|^2 = 1) for a complex dtype, the solvers'
    noise_like convention; N(0, 1) for a real one."""
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
