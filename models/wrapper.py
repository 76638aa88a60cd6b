"""Turn a denoising network into eps / x0 / v / score predictions on a noise schedule.

This is the one place where images change representation: samplers and physics work on
complex64 images ``[B, H, W]``; the network sees real tensors ``[B, 2, H, W]`` (real and
imaginary parts as channels).  Real images ``[B, C, H, W]`` (C = the network's channels) pass
through unchanged.

Parameterizations, with x_t = alpha_t x0 + sigma_t eps (Ho et al. 2020; Salimans & Ho 2022 for
v; Song et al. 2021 for the score):

- ``"eps"``:   the network output is eps.
- ``"x0"``:    the network output is x0; eps = (x_t - alpha_t x0) / sigma_t.
- ``"v"``:     v = alpha_t eps - sigma_t x0 (diffusers' convention, VP only);
               x0 = alpha_t x_t - sigma_t v, eps = sigma_t x_t + alpha_t v.
- ``"score"``: the network output f is sigma_t * score (NCSN++'s ``scale_by_sigma``), i.e.
               score = f / sigma_t = -eps / sigma_t.  Trained by denoising score matching with
               weight sigma^2, the loss is ||f + z||^2 (``medrecon.models.train``).

Time arguments: on a VP schedule ``t`` is the discrete training timestep (0 .. N-1, fractional
values allowed -- the timestep tuner queries shifted times), exactly what diffusers and
``medrecon.sample.sample`` pass.  On a VE schedule ``t`` is whatever that schedule's
``sigma(t)`` takes, and the network is conditioned on sigma itself through
c_noise(sigma) = 100 (ln sigma + 5) (MONAI's sinusoidal embedding wants values of order 1..1000),
so a VE model is independent of how its schedule is parameterised in time.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["DiffusionModel", "PREDICTION_TYPES", "is_ve", "to_channels", "from_channels"]

PREDICTION_TYPES = ("eps", "x0", "v", "score")


def is_ve(schedule: Any) -> bool:
    """True for a variance-exploding schedule (alpha_t == 1, sigma from sigma_min to sigma_max)."""
    return hasattr(schedule, "sigma_max") and not hasattr(schedule, "alphas_cumprod")


def to_channels(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """complex [B, H, W] -> real [B, 2, H, W]; real [B, C, H, W] passes (C must match)."""
    if x.is_complex():
        if x.ndim != 3:
            raise ValueError(f"x: expected complex images [B, H, W], got shape {tuple(x.shape)}")
        if in_channels != 2:
            raise ValueError(f"x: complex images need a 2-channel network, this one has {in_channels}")
        return torch.view_as_real(x).permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"x: expected complex [B, H, W] or real [B, {in_channels}, H, W], got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    return x


def from_channels(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_channels``: back to the representation of ``like``."""
    if like.is_complex():
        return torch.view_as_complex(y.permute(0, 2, 3, 1).float().contiguous()).to(like.dtype)
    return y.to(like.dtype)


class DiffusionModel(nn.Module):
    """A network plus its schedule and output parameterization.

    ``net(x_channels [B, C, H, W], timesteps [B]) -> [B, C, H, W]`` (MONAI ``DiffusionModelUNet``
    or anything with that call signature).  ``schedule`` provides ``alpha(t)`` and ``sigma(t)``
    (``medrecon.models.schedules``).
    """

    def __init__(self, net: nn.Module, schedule: Any, prediction_type: str = "eps",
                 network_config: Any = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not (hasattr(schedule, "alpha") and hasattr(schedule, "sigma")):
            raise ValueError("schedule: expected an object with alpha(t) and sigma(t) (VPSchedule or VE)")
        if is_ve(schedule) and prediction_type == "v":
            raise ValueError("prediction_type 'v' is defined for VP schedules only")
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        inner = getattr(net, "module", net)  # DistributedDataParallel keeps the network in .module
        self.in_channels = int(getattr(inner, "in_channels", 2))
        self.network_config = network_config  # a UNetConfig when built by medrecon (checkpoints)

    # -- time handling ---------------------------------------------------------------------
    def _times(self, t: Any, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t: expected a scalar or a tensor of shape [{batch}], got {tuple(t.shape)}")
        return t

    def _coeffs(self, t: torch.Tensor, ndim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        tc = t.detach()  # the schedules compute on t's device: no host round trip per call
        a = torch.as_tensor(self.schedule.alpha(tc)).to(t.device)
        s = torch.as_tensor(self.schedule.sigma(tc)).to(t.device)
        a = torch.broadcast_to(a, t.shape).to(dtype)
        s = torch.broadcast_to(s, t.shape).to(dtype)
        shape = (-1,) + (1,) * (ndim - 1)
        return a.reshape(shape), s.reshape(shape)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time value fed to the network's embedding."""
        if is_ve(self.schedule):
            sigma = torch.as_tensor(self.schedule.sigma(t.detach())).to(t.device, torch.float32)
            return 100.0 * (torch.log(torch.broadcast_to(sigma, t.shape)) + 5.0)
        return t

    def raw(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """The network output in x's representation (its meaning is ``prediction_type``)."""
        t = self._times(t, x.shape[0], x.device)
        h = to_channels(x, self.in_channels)
        return from_channels(self.net(h, self.net_time(t)), x)

    # -- parameterizations ------------------------------------------------------------------
    def _eps_x0(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tt = self._times(t, x.shape[0], x.device)
        out = self.raw(x, tt)
        real = torch.float32 if x.is_complex() else x.dtype
        a, s = self._coeffs(tt, x.ndim, real)
        p = self.prediction_type
        if p == "eps":
            eps = out
            x0 = (x - s * eps) / a
        elif p == "score":
            eps = -out
            x0 = (x - s * eps) / a
        elif p == "x0":
            x0 = out
            eps = (x - a * x0) / s
        else:  # v
            x0 = a * x - s * out
            eps = s * x + a * out
        return eps, x0

    def eps(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self._eps_x0(x, t)[0]

    def x0(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self._eps_x0(x, t)[1]

    def v(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        if is_ve(self.schedule):
            raise ValueError("v-prediction is defined for VP schedules only")
        tt = self._times(t, x.shape[0], x.device)
        eps, x0 = self._eps_x0(x, tt)
        a, s = self._coeffs(tt, x.ndim, torch.float32 if x.is_complex() else x.dtype)
        return a * eps - s * x0

    def score(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        tt = self._times(t, x.shape[0], x.device)
        eps = self._eps_x0(x, tt)[0]
        _, s = self._coeffs(tt, x.ndim, torch.float32 if x.is_complex() else x.dtype)
        return -eps / s

    def predict(self, kind: str, x: torch.Tensor, t: Any) -> torch.Tensor:
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"kind: expected one of {PREDICTION_TYPES}, got {kind!r}")
        return getattr(self, kind)(x, t)

    @property
    def eps_fn(self) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """``eps_fn(x, t)`` for ``medrecon.sample.sample`` (no autograd; discrete VP timesteps)."""

        def eps_fn(x: torch.Tensor, t: Any) -> torch.Tensor:
            with torch.no_grad():
                return self.eps(x, t)

        return eps_fn

    def forward(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self.raw(x, t)

    @staticmethod
    def c_noise_of_sigma(sigma: float) -> float:
        """The VE conditioning value for a noise level (documented above)."""
        return 100.0 * (math.log(sigma) + 5.0)
