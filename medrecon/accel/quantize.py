"""Post-training static int8 quantization of a diffusion U-Net, calibrated per timestep range.

Every ``nn.Conv2d`` and ``nn.Linear`` of the network runs as a ``torch.ao`` quantized kernel
(``torch.ops.quantized.conv2d`` / ``linear``, CPU, x86 backend: oneDNN/FBGEMM): weights int8,
per output channel, symmetric; activations uint8, per tensor, affine, min/max calibrated.  The
layers between (GroupNorm, SiLU, attention softmax, up/down sampling) stay float32, so each
quantized layer quantizes its input and dequantizes its output (eager-mode ``QuantStub`` /
``DeQuantStub`` around every layer).  The attention core (softmax(QK^T) V of the mid-block) stays
float32 and runs as PyTorch's fused ``scaled_dot_product_attention`` (MONAI's
``use_flash_attention``; the same math as its einsum path) -- it is a third of the call once the
convs are int8 (docs/accel.md).

Calibration follows Q-Diffusion (Li et al., ICCV 2023, github:Xiuyu-Li/q-diffusion): the
calibration set is the network's inputs recorded along the sampler's own trajectories, taken
uniformly over the timesteps (``qdiff/utils.py:325-345`` ``get_train_samples``: ``cali_st``
timesteps evenly spaced over the recorded ``sample_data["ts"]``).  Activation ranges change a
lot with t (Q-Diffusion Fig. 2), so the time axis is cut into ``ranges`` intervals holding equal
numbers of calibration calls and each interval gets its own activation scales (one calibrated
model per range; the int8 weights are shared).  A call at time t uses its range's scales; a
range no calibration call fell in uses the nearest calibrated one.  The 1x1 shortcut convs of
the up-blocks see the concatenation of the deep feature and the encoder skip, two tensors of
very different ranges: as Q-Diffusion's shortcut-splitting (``qdiff/quant_layer.py:248-262``)
their input is quantized in the two parts, each with its own scale.

Autograd (DPS): a quantized layer's backward is the float layer's input gradient (a
straight-through estimator of the rounding), so gradients through the network still flow.

Usage::

    q = quantize_unet(model.net, samples)          # samples: [(x [B, C, H, W], t [B]), ...]
    qmodel = DiffusionModel(q, model.schedule, model.prediction_type)
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = ["QUANTIZE", "DEFAULT_RANGES", "QuantizedNet", "quantize_unet", "record_inputs", "uniform_over_time",
           "check_quantize"]

QUANTIZE = ("off", "int8")
DEFAULT_RANGES = 4  # timestep ranges with their own activation scales
ENGINE = "onednn"  # measured faster than "x86"/"fbgemm" for this U-Net on AVX512-VNNI/AMX (docs/accel.md)


def check_quantize(value: str, device: torch.device | str, method: str) -> None:
    """Validate the ``quantize`` option of ``method`` for ``device`` (a clear one-line error)."""
    if value not in QUANTIZE:
        raise ValueError(f"{method} option quantize: expected one of {QUANTIZE}, got {value!r}")
    if value == "int8" and torch.device(device).type != "cpu":
        raise ValueError(f"{method} option quantize=int8: the torch.ao int8 kernels run on CPU only, the input "
                         f"is on {torch.device(device).type}; use precision=bf16 or fp16 there")


@contextmanager
def _engine(name: str):
    old = torch.backends.quantized.engine
    if name in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class _State:
    """Shared by the quantized layers of one network: what they do now and which range is active."""

    def __init__(self) -> None:
        self.mode = "float"  # "observe": float + min/max; "int8": quantized kernels; "float": float layers
        self.range = 0


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 affine (scale, zero point) covering [lo, hi] (and 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-lo / scale))))


def _per_channel_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 of ``w`` per output channel (dim 0), scale max |w| / 127."""
    scale = (w.flatten(1).abs().amax(1).clamp_min(1e-12) / 127.0).double()
    return torch.quantize_per_channel(w.contiguous(), scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                      torch.qint8)


class _STE(torch.autograd.Function):
    """Forward: the int8 kernel's output; backward: the float layer's input gradient."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.input_shape = layer, x.shape
        return layer._int8(x)

    @staticmethod
    def backward(ctx, g):
        layer = ctx.layer
        w = layer.layer.weight
        if isinstance(layer.layer, nn.Linear):
            return g @ w.to(g.dtype), None
        f = layer.layer
        return torch.nn.grad.conv2d_input(ctx.input_shape, w.to(g.dtype), g, f.stride, f.padding, f.dilation,
                                          f.groups), None


class _QLayer(nn.Module):
    """A Conv2d / Linear with min/max observers and int8 parameters per timestep range."""

    def __init__(self, layer: nn.Module, state: _State, ranges: int, split: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.state = state
        self.split = split  # > 0: input channels [:split] and [split:] quantized apart (shortcut splitting)
        cols = 4 if split else 2  # inputs, then outputs (per part when split)
        self.lo = torch.full((ranges, cols), float("inf"))
        self.hi = torch.full((ranges, cols), float("-inf"))
        self.qp: list[list[tuple[float, int]]] | None = None
        self.packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.state.mode
        if mode == "int8":
            if torch.is_grad_enabled() and x.requires_grad:
                return _STE.apply(x, self)
            return self._int8(x)
        if mode != "observe":
            return self.layer(x)
        r, f = self.state.range, self.layer
        if self.split:  # the two parts' outputs apart, as the int8 path computes them
            w = f.weight
            ins = [x[:, :self.split], x[:, self.split:]]
            outs = [nn.functional.conv2d(ins[0], w[:, :self.split], f.bias),
                    nn.functional.conv2d(ins[1], w[:, self.split:])]
            y = outs[0] + outs[1]
        else:
            y = f(x)
            ins, outs = [x], [y]
        for j, v in enumerate(ins + outs):
            self.lo[r, j] = min(float(self.lo[r, j]), float(v.min()))
            self.hi[r, j] = max(float(self.hi[r, j]), float(v.max()))
        return y

    def convert(self) -> None:
        """Pack the int8 weights (per output channel) and fix each range's activation parameters."""
        seen = [r for r in range(self.lo.shape[0]) if torch.isfinite(self.lo[r]).all()]
        if not seen:
            raise RuntimeError("quantize: a layer saw no calibration input (the network never reached it)")
        self.qp = []
        for r in range(self.lo.shape[0]):
            near = min(seen, key=lambda s: (abs(s - r), s))  # the nearest calibrated range
            self.qp.append([_qparams(float(self.lo[near, j]), float(self.hi[near, j]))
                            for j in range(self.lo.shape[1])])
        f = self.layer
        w = f.weight.detach().float()
        bias = None if f.bias is None else f.bias.detach().float()
        ws = [w[:, :self.split], w[:, self.split:]] if self.split else [w]
        self.packed = []
        with _engine(ENGINE):
            for j, wj in enumerate(ws):
                qw = _per_channel_int8(wj)
                b = bias if j == 0 else None
                self.packed.append(torch.ops.quantized.linear_prepack(qw, b) if isinstance(f, nn.Linear) else
                                   torch.ops.quantized.conv2d_prepack(qw, b, list(f.stride), list(f.padding),
                                                                      list(f.dilation), f.groups))

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        qp = self.qp[self.state.range]
        n = len(self.packed)
        xf = x.float()
        ins = [xf[:, :self.split], xf[:, self.split:]] if self.split else [xf]
        op = torch.ops.quantized.linear if isinstance(self.layer, nn.Linear) else torch.ops.quantized.conv2d
        y = None
        for j in range(n):
            s, z = qp[j]
            xj = ins[j]  # NHWC, the layout of the int8 conv kernels (no copy when already so)
            xj = xj.contiguous(memory_format=torch.channels_last) if xj.ndim == 4 else xj.contiguous()
            q = torch.quantize_per_tensor(xj, s, z, torch.quint8)
            part = op(q, self.packed[j], *qp[n + j]).dequantize()
            y = part if y is None else y + part
        return y.to(x.dtype)


class QuantizedNet(nn.Module):
    """A copy of a U-Net whose Conv2d / Linear layers run int8 (module docstring).  Called as the
    float net, ``(x [B, C, H, W], timesteps [B], ...)``; each call uses the activation scales of its
    timestep range (a batch spanning several ranges runs per range).  ``inner`` is what is called
    (the U-Net, or a wrapper of it such as `medrecon.accel.DeepCacheUNet`, see `wrap`)."""

    def __init__(self, net: nn.Module, ranges: int = DEFAULT_RANGES) -> None:
        super().__init__()
        if int(ranges) < 1:
            raise ValueError(f"ranges: expected an int >= 1, got {ranges!r}")
        self.unet = copy.deepcopy(net).eval()
        self.inner = self.unet
        self.in_channels = int(getattr(net, "in_channels", 2))
        self.state = _State()
        self.ranges = int(ranges)
        self.bounds = torch.zeros(0)  # the inner range boundaries on the network's time axis
        self.layers: list[_QLayer] = []
        self._replace(self.unet, self._split_channels(self.unet))
        for m in self.unet.modules():  # the float attention core as one fused kernel (same math)
            if hasattr(m, "use_flash_attention") and getattr(m, "rel_positional_embedding", None) is None:
                m.use_flash_attention = True

    @staticmethod
    def _split_channels(net: nn.Module) -> dict[int, int]:
        """id(1x1 shortcut conv of an up-block resnet) -> channels of the deep feature in its input
        cat(h, skip) (MONAI ``UpBlock``: h is the previous up level's output, then each resnet's)."""
        out: dict[int, int] = {}
        outs = getattr(net, "block_out_channels", None)
        if not outs:
            return out
        prev = int(outs[-1])  # the middle block's output
        for blk in getattr(net, "up_blocks", []):
            for res in getattr(blk, "resnets", []):
                conv = getattr(getattr(res, "skip_connection", None), "conv", None)
                if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and 0 < prev < conv.in_channels:
                    out[id(conv)] = prev
                prev = int(getattr(res, "out_channels", prev))
        return out

    def _replace(self, mod: nn.Module, splits: dict[int, int]) -> None:
        for name, child in mod.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                q = _QLayer(child, self.state, self.ranges, splits.get(id(child), 0))
                self.layers.append(q)
                setattr(mod, name, q)
            else:
                self._replace(child, splits)

    def range_of(self, t: torch.Tensor) -> torch.Tensor:
        """Range index of each network time value."""
        return torch.bucketize(t.detach().float().cpu(), self.bounds, right=True)

    def wrap(self, inner: nn.Module) -> "QuantizedNet":
        """A shallow copy calling ``inner`` (built on ``self.unet``) under this net's range selection."""
        other = copy.copy(self)
        other._modules = dict(self._modules)
        other._modules["inner"] = inner
        return other

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0]) \
            if torch.as_tensor(timesteps).numel() == 1 else torch.as_tensor(timesteps, device=x.device)
        r = self.range_of(t)
        if bool((r == r[0]).all()):
            self.state.range = int(r[0])
            return self.inner(x, t, *args, **kwargs)
        out = None
        for k in r.unique().tolist():  # a batch over several ranges: one call per range
            idx = (r == k).nonzero().reshape(-1).to(x.device)
            self.state.range = int(k)
            y = self.inner(x[idx], t[idx], *args, **kwargs)
            out = y.new_empty((x.shape[0],) + y.shape[1:]) if out is None else out
            out[idx] = y
        return out

    @torch.no_grad()
    def calibrate(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> "QuantizedNet":
        """Observe activations on ``samples`` ([(x [B, C, H, W], t [B])]), one range at a time, then
        pack the int8 layers.  Range boundaries: quantiles of the samples' times (equal counts)."""
        if not samples:
            raise ValueError("quantize: the calibration set is empty (the sampler made no network call)")
        xs = [(x[i:i + 1], t.reshape(-1).expand(x.shape[0])[i:i + 1]) for x, t in samples for i in range(x.shape[0])]
        times = torch.cat([t for _, t in xs]).float().cpu()
        q = torch.linspace(0, 1, self.ranges + 1)[1:-1]
        self.bounds = torch.quantile(times, q) if self.ranges > 1 else torch.zeros(0)
        self.state.mode = "observe"
        try:
            for x, t in xs:
                self.state.range = int(self.range_of(t)[0])
                self.unet(x, t)
        finally:
            self.state.mode = "float"
        for layer in self.layers:
            layer.convert()
        self.state.mode = "int8"
        return self

    def calibrated_ranges(self) -> int:
        """How many timestep ranges received calibration calls."""
        return int(sum(bool(torch.isfinite(self.layers[0].lo[r]).all()) for r in range(self.ranges)))


def uniform_over_time(samples: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """At most ``n`` of the recorded calls, evenly spaced along the trajectory (Q-Diffusion's
    ``range(0, nsteps, nsteps // cali_st)``, qdiff/utils.py:336)."""
    if n >= len(samples):
        return list(samples)
    step = len(samples) / n
    return [samples[int(i * step)] for i in range(n)]


@contextmanager
def record_inputs(net: nn.Module, into: list):
    """Append the (x, t) of every call of ``net`` (detached copies) to ``into`` while in the block."""
    def hook(_mod, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        t = args[1] if len(args) > 1 else kwargs.get("timesteps")
        into.append((x.detach().clone(), torch.as_tensor(t).detach().clone()))
    h = net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield into
    finally:
        h.remove()


def quantize_unet(net: nn.Module, samples: list[tuple[torch.Tensor, torch.Tensor]],
                  ranges: int = DEFAULT_RANGES) -> QuantizedNet:
    """The int8 `QuantizedNet` of ``net`` calibrated on ``samples`` (see `record_inputs`)."""
    return QuantizedNet(net, ranges).calibrate(samples)


def calibration_samples(run: Callable[[], object], net: nn.Module, n: int = 64) -> list:
    """Run ``run()`` (a float sampler calling ``net``) and return up to ``n`` of its network inputs,
    uniform over its trajectory."""
    rec: list = []
    with record_inputs(net, rec):
        run()
    return uniform_over_time(rec, n)


__all__ += ["calibration_samples"]
