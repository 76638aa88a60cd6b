"""Noise schedules, prediction conversions and time-step spacings for diffusion priors.

What: the discrete variance-preserving (VP) schedule of DDPM (Ho et al., NeurIPS 2020, Eq. 4:
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps), its continuous form (Song et al., ICLR 2021, Eq. 33:
beta(t) = beta_min + t (beta_max - beta_min)), the variance-exploding (VE) schedule (Song et al.,
Eq. 31: sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1), the Karras/EDM sigmas (Karras et
al., NeurIPS 2022, Eq. 5), conversions between eps / x0 / v / score predictions, and the sampling
time-step spacings that diffusers uses ("leading", "trailing", "linspace") plus quadratic (DDIM
paper, Sec. D.2), log-SNR uniform (DPM-Solver, Lu et al. 2022, Sec. 3.3) and Karras.

Why: every solver, the network wrapper and the trainer read the same tables, so the numbers agree
with diffusers one-to-one.  Tables are float64 on the CPU (``make_betas`` returns diffusers' float32
values, upcast); callers move what they need to their device.  Only torch/numpy are imported
(models/ must not import medrecon core).
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

TimeLike = Union[float, int, torch.Tensor, np.ndarray]

BETA_KINDS = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace", "quadratic", "logsnr", "karras")
PREDICTIONS = ("eps", "x0", "v", "score")


def make_betas(kind: str = "linear", n: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """Training betas [n] (float64 holding diffusers' float32 values).

    ``linear`` / ``scaled_linear`` as diffusers' ``beta_schedule`` of the same name; ``cosine`` is
    diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal, ICML 2021, Eq. 17, s = 0.008, capped 0.999).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if kind == "linear":
        b = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif kind == "scaled_linear":
        b = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    elif kind == "cosine":
        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        b = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                         dtype=torch.float32)
    else:
        raise ValueError(f"kind: expected one of {BETA_KINDS}, got {kind!r}")
    return b.double()


def _as_t(t: TimeLike) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class VPSchedule:
    """Discrete VP schedule from training betas: alpha(t) = sqrt(abar_t), sigma(t) = sqrt(1 - abar_t).

    ``t`` is the training timestep 0 .. N-1; fractional t interpolates abar linearly; t = -1 means
    abar = 1 (clean data).  (diffusers' Euler/Heun interpolate sigma = sqrt((1-abar)/abar) linearly
    instead; ``medrecon.gaussian_prior.GaussianPrior.abar_at`` follows that.  The two differ only at
    fractional t, by second-order amounts: ~2e-5 relative in abar at t = 499.5, linear betas.)
    """

    def __init__(self, betas: torch.Tensor):
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.ndim != 1 or len(b) < 1 or bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError("betas: expected a 1-D tensor with values in (0, 1)")
        self.betas = b
        self.alphas_cumprod = torch.cumprod(1.0 - b, 0)
        self.num_train_timesteps = len(b)

    def _table(self, device: torch.device) -> torch.Tensor:
        """[1, abar_0, ..., abar_{N-1}] on ``device`` (copied there once, then cached)."""
        cache = self.__dict__.setdefault("_tables", {})
        if device not in cache:
            cache[device] = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod]).to(device)
        return cache[device]

    def abar(self, t: TimeLike) -> torch.Tensor:
        """abar at ``t`` on t's device.  The range check runs for CPU times only: on an accelerator
        it would stall every network call for a host read-back (out-of-range t is clamped there)."""
        t = _as_t(t)
        n = self.num_train_timesteps
        if t.device.type == "cpu" and (bool((t < -1).any()) or bool((t > n - 1).any())):
            raise ValueError(
                f"t: timestep {float(t.max() if bool((t > n - 1).any()) else t.min()):g} is outside the "
                f"training horizon: expected timesteps in [-1, {n - 1}] (the schedule has {n} training "
                f"timesteps; sample with the model's own betas)")
        table = self._table(t.device)
        pos = t + 1.0
        lo = pos.floor().clamp(0, n).long()
        hi = (lo + 1).clamp(max=n)
        w = pos - lo
        return table[lo] * (1 - w) + table[hi] * w

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return self.abar(t).sqrt()

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return (1.0 - self.abar(t)).sqrt()

    def edm_sigma(self, t: TimeLike) -> torch.Tensor:
        """sigma / alpha = sqrt((1 - abar) / abar): the noise level of x / alpha (Karras et al.)."""
        a = self.abar(t)
        return ((1 - a) / a).sqrt()

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        a = self.abar(t)
        return torch.log(a / (1 - a))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep with edm_sigma(t) = sigma (diffusers' ``_sigma_to_t``: interpolation in log
        sigma), computed on sigma's device (float64); sigmas outside the table's range are clamped to it."""
        ls = torch.as_tensor(sigma).to(torch.float64).clamp_min(1e-10).log()  # on sigma's device
        cache = self.__dict__.setdefault("_log_sigmas", {})
        if ls.device not in cache:  # the table is copied to a device once, then cached
            cache[ls.device] = (((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()).log().to(ls.device)
        log_sigmas = cache[ls.device]
        idx = torch.searchsorted(log_sigmas, ls.reshape(-1)).clamp(1, len(log_sigmas) - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((ls.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).reshape(ls.shape)


class VPContinuous:
    """Continuous VP-SDE (Song et al. 2021, Eq. 33), t in [0, 1]:
    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, sigma = sqrt(1 - alpha^2)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"beta_min, beta_max: expected 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def alpha(self, t: TimeLike) -> torch.Tensor:
        t = _as_t(t)
        return torch.exp(-0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return (1.0 - self.alpha(t) ** 2).sqrt()


class VE:
    """VE-SDE (Song et al. 2021, Eq. 31), t in [0, 1]: alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(_as_t(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _as_t(t)

    def t_of_sigma(self, sigma: TimeLike) -> torch.Tensor:
        return torch.log(_as_t(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: n sigmas from sigma_max down to sigma_min (no trailing zero)."""
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


# ---------------------------------------------------------------- prediction conversions
def _check_pred(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"prediction type: expected one of {PREDICTIONS}, got {kind!r}")


def to_eps(pred: torch.Tensor, kind: str, x_t: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """eps from an eps / x0 / v / score prediction, with x_t = alpha_t x0 + sigma_t eps,
    v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022), score = -eps / sigma_t."""
    _check_pred(kind)
    if kind == "eps":
        return pred
    if kind == "x0":
        return (x_t - alpha_t * pred) / sigma_t
    if kind == "v":
        return (alpha_t * pred + sigma_t * x_t) / (alpha_t ** 2 + sigma_t ** 2)
    return -sigma_t * pred


def to_x0(pred: torch.Tensor, kind: str, x_t: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """x0 from an eps / x0 / v / score prediction (conventions as ``to_eps``)."""
    _check_pred(kind)
    if kind == "x0":
        return pred
    if kind == "v":
        return (alpha_t * x_t - sigma_t * pred) / (alpha_t ** 2 + sigma_t ** 2)
    eps = to_eps(pred, kind, x_t, alpha_t, sigma_t)
    return (x_t - sigma_t * eps) / alpha_t


def convert(pred: torch.Tensor, src: str, dst: str, x_t: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """Convert a prediction of type ``src`` into type ``dst`` (any of eps, x0, v, score)."""
    _check_pred(src)
    _check_pred(dst)
    eps = to_eps(pred, src, x_t, alpha_t, sigma_t)
    x0 = to_x0(pred, src, x_t, alpha_t, sigma_t)
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "v":
        return alpha_t * eps - sigma_t * x0
    return -eps / sigma_t


# ---------------------------------------------------------------- time-step spacings
def spacing(kind: str, steps: int, num_train_timesteps: int = 1000, *, steps_offset: int = 0,
            alphas_cumprod: torch.Tensor | None = None, rho: float = 7.0) -> torch.Tensor:
    """Descending sampling timesteps [steps] (int64, or float64 for ``karras``/``logsnr`` maps).

    leading:   (arange(steps) * (N // steps)) reversed + steps_offset    (diffusers, DDIM/DDPM/PNDM default)
    trailing:  round(arange(N, 0, -N / steps)) - 1                       (diffusers)
    linspace:  round(linspace(0, N - 1, steps)) reversed                 (diffusers)
    quadratic: round(linspace(0, sqrt(0.8 N), steps)^2) reversed         (Song et al. 2021, DDIM Sec. D.2)
    logsnr:    uniform in log-SNR between t = N-1 and t = 0 (needs alphas_cumprod), fractional
    karras:    Karras sigmas between the schedule's extremes mapped to fractional t (needs alphas_cumprod)
    """
    n = num_train_timesteps
    if not isinstance(steps, int) or steps < 1 or steps > n:
        raise ValueError(f"steps: expected an int in [1, {n}], got {steps!r}")
    if kind == "leading":
        ratio = n // steps
        t = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif kind == "trailing":
        t = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif kind == "linspace":
        t = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    elif kind == "quadratic":
        t = (np.linspace(0, np.sqrt(n * 0.8), steps) ** 2).round()[::-1].copy().astype(np.int64)
    elif kind in ("logsnr", "karras"):
        if alphas_cumprod is None:
            raise ValueError(f"alphas_cumprod: required for spacing {kind!r}")
        sched = VPSchedule(1 - torch.as_tensor(alphas_cumprod, dtype=torch.float64) /
                           torch.cat([torch.ones(1, dtype=torch.float64),
                                      torch.as_tensor(alphas_cumprod, dtype=torch.float64)[:-1]]))
        s_all = sched.edm_sigma(torch.arange(n))
        if kind == "logsnr":
            sig = torch.exp(torch.linspace(math.log(s_all[-1]), math.log(s_all[0]), steps, dtype=torch.float64))
        else:
            sig = karras_sigmas(steps, float(s_all[0]), float(s_all[-1]), rho)
        return sched.sigma_to_t(sig)
    else:
        raise ValueError(f"kind: expected one of {SPACINGS}, got {kind!r}")
    return torch.from_numpy(t)
