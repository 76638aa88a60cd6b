"""Reduced-precision network calls: ``precision=bf16|fp16`` runs the U-Net under ``torch.autocast``.

Autocast casts the convolutions and linears to the low-precision dtype and keeps the
reductions that need range (GroupNorm statistics, softmax) in float32, per PyTorch's autocast op
lists; the network output is returned as float32, so the samplers' arithmetic (schedules, data
consistency, CG) stays float32.  fp16 is for GPUs (CPU autocast does not run fp16 convolutions
fast, if at all, so it is an error there); bf16 runs on GPUs that support it and on CPU (fast
where the CPU has AVX512-BF16 / AMX).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "check_precision", "AutocastNet"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: str, device: torch.device | str, method: str) -> torch.dtype | None:
    """The autocast dtype of the ``precision`` option (None: float32), or a clear error."""
    if value not in PRECISIONS:
        raise ValueError(f"{method} option precision: expected one of {tuple(PRECISIONS)}, got {value!r}")
    dev = torch.device(device)
    if value == "fp16" and dev.type == "cpu":
        raise ValueError(f"{method} option precision=fp16: fp16 autocast is for GPUs; on CPU use bf16 or fp32")
    if value == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{method} option precision=bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return PRECISIONS[value]


class AutocastNet(nn.Module):
    """``net(x, t, ...)`` under ``torch.autocast(x.device.type, dtype)``, output float32.  ``unet``
    is the U-Net inside (for `medrecon.accel.DeepCacheUNet`); ``wrap(inner)`` the same precision
    around a wrapper of it."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype
        self.unet = getattr(net, "unet", net)
        self.in_channels = int(getattr(net, "in_channels", 2))

    def wrap(self, inner: nn.Module) -> "AutocastNet":
        return AutocastNet(self.net.wrap(inner) if hasattr(self.net, "wrap") else inner, self.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.net(x, *args, **kwargs).float()
