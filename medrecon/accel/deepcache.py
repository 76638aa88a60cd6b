"""DeepCache for MONAI's ``DiffusionModelUNet`` (Ma, Fang & Wang, "DeepCache: Accelerating
Diffusion Models for Free", CVPR 2024, Sec. 3.2-3.3).

Adjacent denoising steps produce almost the same high-level U-Net features.  DeepCache runs the
whole U-Net on *full* steps and keeps the feature map entering the shallow up-block of the
chosen branch (the output of the deeper up-blocks, Eq. 4: F_cache <- U_{m+1}(.)); on the
*cached* steps in between it runs only the shallow path -- conv_in, down blocks 0..m, then up
blocks m..0 fed with the cached deep feature and the fresh skip connections (Eq. 5) -- and the
output head.  With branch m = 0 (the default, as in the paper) a cached step costs the two
full-resolution blocks only.

The forward below mirrors ``DiffusionModelUNet.forward`` (MONAI 1.4-1.6:
conv_in -> down blocks collecting skips -> middle block -> up blocks popping skips -> out); the
skips of level m's downsampler belong to the deeper up-block and are dropped on cached steps.

Schedules: ``interval=N`` makes every N-th call a full step (uniform, paper Sec. 3.3);
``full_steps=[0, 1, 3, 7, ...]`` gives a non-uniform list of call indices (the paper's
quadratic variant concentrates full steps where features change fastest).  A "step" is one
network call; call ``reset()`` before each new sampling run.  Usage::

    fast = DeepCacheUNet(unet, interval=3)
    model = DiffusionModel(fast, schedule, "eps")       # then sample with model.eps_fn
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

__all__ = ["DeepCacheUNet", "quadratic_full_steps"]


def quadratic_full_steps(num_calls: int, num_full: int) -> list[int]:
    """Non-uniform full-step indices, denser at the start: i_k = round((k / K)^2 * num_calls)."""
    if num_full < 1 or num_calls < 1:
        raise ValueError(f"num_calls and num_full must be >= 1, got {num_calls}, {num_full}")
    idx = sorted({min(num_calls - 1, round((k / num_full) ** 2 * num_calls)) for k in range(num_full)})
    return idx


class DeepCacheUNet(nn.Module):
    """Wrap a ``monai.networks.nets.DiffusionModelUNet`` with DeepCache feature reuse."""

    def __init__(
        self,
        unet: nn.Module,
        interval: int = 3,
        full_steps: Iterable[int] | None = None,
        branch: int = 0,
    ) -> None:
        super().__init__()
        for name in ("conv_in", "time_embed", "down_blocks", "middle_block", "up_blocks", "out"):
            if not hasattr(unet, name):
                raise ValueError(f"unet: expected a MONAI DiffusionModelUNet (missing .{name})")
        if getattr(unet, "num_class_embeds", None) is not None:
            raise ValueError("unet: class-conditional DiffusionModelUNet (num_class_embeds) is not supported by DeepCache")
        levels = len(unet.down_blocks)
        if not 0 <= branch < levels:
            raise ValueError(f"branch: expected 0 <= branch < {levels} (number of U-Net levels), got {branch}")
        if full_steps is None and int(interval) < 1:
            raise ValueError(f"interval: expected an integer >= 1, got {interval}")
        self.unet = unet
        self.interval = int(interval)
        self.full_steps: frozenset[int] | None = None
        if full_steps is not None:
            fs = frozenset(int(i) for i in full_steps)
            if 0 not in fs:
                raise ValueError("full_steps: must contain 0 (the first call has no cache to reuse)")
            self.full_steps = fs
        self.branch = int(branch)
        self.in_channels = int(getattr(unet, "in_channels", 2))
        self.reset()

    def reset(self) -> None:
        """Forget the cache and restart the call counter (do this before each sampling run)."""
        self.calls = 0
        self.full_calls = 0
        self.cached_calls = 0
        self._cache: torch.Tensor | None = None

    def is_full(self, call: int) -> bool:
        if self.full_steps is not None:
            return call in self.full_steps
        return call % self.interval == 0

    def _emb(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        u = self.unet
        t_emb = get_timestep_embedding(timesteps, u.block_out_channels[0]).to(dtype=x.dtype)
        return u.time_embed(t_emb)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        u = self.unet
        call = self.calls
        self.calls += 1
        full = self.is_full(call) or self._cache is None or self._cache.shape[0] != x.shape[0]
        emb = self._emb(x, timesteps)
        h = u.conv_in(x)
        skips: list[torch.Tensor] = [h]
        n_up = len(u.up_blocks)
        first_up = n_up - 1 - self.branch  # the up block the cached feature enters
        if full:
            self.full_calls += 1
            for blk in u.down_blocks:
                h, res = blk(hidden_states=h, temb=emb, context=context)
                skips.extend(res)
            h = u.middle_block(hidden_states=h, temb=emb, context=context)
            for j, blk in enumerate(u.up_blocks):
                if j == first_up:
                    self._cache = h
                idx = -len(blk.resnets)
                res, skips = skips[idx:], skips[:idx]
                h = blk(hidden_states=h, res_hidden_states_list=res, temb=emb, context=context)
            return u.out(h)
        self.cached_calls += 1
        for i in range(self.branch + 1):
            blk = u.down_blocks[i]
            h, res = blk(hidden_states=h, temb=emb, context=context)
            skips.extend(res)
        if u.down_blocks[self.branch].downsampler is not None:
            skips.pop()  # the downsampled skip feeds a deeper (skipped) up block
        h = self._cache
        for blk in list(u.up_blocks)[first_up:]:
            idx = -len(blk.resnets)
            res, skips = skips[idx:], skips[:idx]
            h = blk(hidden_states=h, res_hidden_states_list=res, temb=emb, context=context)
        return u.out(h)
