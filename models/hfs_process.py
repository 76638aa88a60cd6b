"""The HFS-SDE forward process and its training loss (Cao, Cui et al., IEEE TMI 2024, "High-Frequency
Space Diffusion Model for Accelerated MRI"; repo Aboriginer/HFS-SDE, ``sde_lib.py::HFS_SDE`` and
``losses.py::get_sde_loss_fn``; ../shared/METHODS.md "HFS-SDE").

Forward SDE, noise only on the high frequencies (Mhat = F^-1 (1 - M_L) F, M_L the low-frequency
(ACS) mask fixed at training)::

    dx = -1/2 beta(t) Mhat x dt + sqrt(beta(t)) Mhat dw,        beta(t) = b0 + t (b1 - b0)

with b0 = 0.1, b1 = 20 (the repo's ``beta_min`` / ``beta_max``).  Marginal, with
c(t) = -1/4 t^2 (b1 - b0) - 1/2 t b0 (the VP log-mean coefficient)::

    x_t = x_0 + (e^c - 1) Mhat x_0 + std(t) Mhat z,    std(t) = sqrt(1 - e^{2c})

so the low frequencies never change and the high ones follow a VP-SDE.  Training loss (denoising
score matching on this marginal, the repo's ``likelihood_weighting=False`` branch)::

    E_{t ~ U[eps, 1], x_0, z} || std Mhat s(x_t, std) + Mhat z ||^2

(mean over pixels and real/imag parts, ``reduce_mean=True`` as in ``configs/hfssde``); it is
minimised by Mhat s = Mhat grad log p_t (the low-frequency part of s is not constrained).

Conventions (medrecon, not the repo's -- see ``medrecon.models.train``): complex images [..., H, W]
and circular complex noise z ~ CN(0, I) (E|z|^2 = 1), so std^2 is the variance per complex sample;
score = -(x - mean) / var for a CN(mean, var) variable (``DiffusionModel.score`` = -eps / sigma).
The network is conditioned on the noise level std, as the repo's ``get_score_fn`` does (labels =
``marginal_prob(0, t)[1]``): wrap any VE-type ``DiffusionModel`` with prediction type ``"score"``
(it is conditioned on c_noise(sigma), independent of its own time parameterisation) with
`hfs_score_fn`; its raw output is std * s (NCSN++'s ``scale_by_sigma``; the repo's DDPM net outputs
s directly, ``scale_by_sigma=False`` -- same loss for the same score).

M_L: ``acs`` central columns (the repo's ``low_frequency_acs{acs}.mat``: full k-space lines along
the phase-encode axis W; ``region="square"`` gives the repo's ``center_length`` acs x acs block),
starting at index W//2 - acs//2 (medrecon's ACS crop; identical to the repo's (W - acs)//2 for
even acs).  Mhat is applied with uncentered FFTs (a circular convolution commutes with the image
shifts of the centered FFT), 1-D along W for ``"lines"``.  Only torch is imported (models/ knows
nothing of physics).
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch

__all__ = ["HFSSDE", "hfs_loss", "hfs_score_fn"]

TimeLike = Union[float, torch.Tensor]
REGIONS = ("lines", "square")


class HFSSDE:
    """The HFS forward process (module docstring): schedule, masks, Mhat, marginal, forward SDE."""

    def __init__(self, acs: int = 16, beta_min: float = 0.1, beta_max: float = 20.0, region: str = "lines"):
        if not isinstance(acs, int) or isinstance(acs, bool) or acs < 1:
            raise ValueError(f"acs: expected a positive int (width of the low-frequency block), got {acs!r}")
        if not 0 < beta_min < beta_max:
            raise ValueError(f"beta_min, beta_max: expected 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if region not in REGIONS:
            raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")
        self.acs, self.beta_min, self.beta_max, self.region = int(acs), float(beta_min), float(beta_max), region
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (f"HFSSDE(acs={self.acs}, beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"region={self.region!r})")

    # -- JSON round trip (checkpoint ``extra``) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": "hfs", "acs": self.acs, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "region": self.region}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HFSSDE":
        if not isinstance(d, dict) or d.get("type") != "hfs":
            raise ValueError(f"expected {{'type': 'hfs', 'acs': ..., ...}}, got {d!r}")
        return cls(int(d["acs"]), float(d.get("beta_min", 0.1)), float(d.get("beta_max", 20.0)),
                   str(d.get("region", "lines")))

    # -- schedule (float64 tensors) ----------------------------------------------------------
    def beta(self, t: TimeLike) -> torch.Tensor:
        return self.beta_min + torch.as_tensor(t, dtype=torch.float64) * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: TimeLike) -> torch.Tensor:
        """c(t) = -1/4 t^2 (b1 - b0) - 1/2 t b0: the high frequencies of x_0 are scaled by e^c."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def std(self, t: TimeLike) -> torch.Tensor:
        return (-torch.expm1(2.0 * self.log_mean_coeff(t))).sqrt()

    # -- masks and projections ---------------------------------------------------------------
    def _check_shape(self, shape) -> tuple[int, int]:
        H, W = int(shape[0]), int(shape[1])
        if self.acs > W or (self.region == "square" and self.acs > H):
            raise ValueError(f"acs={self.acs} does not fit an image of size ({H}, {W})")
        return H, W

    def low_mask(self, shape: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
        """M_L as a bool mask in centered k-space: [1, W] (``lines``) or [H, W] (``square``)."""
        H, W = self._check_shape(shape)
        w0 = W // 2 - self.acs // 2
        if self.region == "lines":
            m = torch.zeros(1, W, dtype=torch.bool, device=device)
            m[:, w0:w0 + self.acs] = True
        else:
            h0 = H // 2 - self.acs // 2
            m = torch.zeros(H, W, dtype=torch.bool, device=device)
            m[h0:h0 + self.acs, w0:w0 + self.acs] = True
        return m

    def _keep(self, shape, device, dtype) -> torch.Tensor:
        """(1 - M_L) in uncentered FFT order ([W] for lines, [H, W] for square), cached."""
        key = (tuple(shape), str(device), dtype)
        if key not in self._cache:
            hf = (~self.low_mask(shape)).to(dtype)
            keep = torch.fft.ifftshift(hf[0] if self.region == "lines" else hf,
                                       dim=(-1,) if self.region == "lines" else (-2, -1))
            self._cache[key] = keep.to(device)
        return self._cache[key]

    def high_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Mhat x = F^-1 (1 - M_L) F x for complex images ``[..., H, W]``."""
        if not isinstance(x, torch.Tensor) or not x.is_complex() or x.ndim < 2:
            raise ValueError(f"x: expected complex images [..., H, W], got {getattr(x, 'dtype', type(x).__name__)} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        keep = self._keep(x.shape[-2:], x.device, x.real.dtype)
        if self.region == "lines":
            return torch.fft.ifft(torch.fft.fft(x, dim=-1) * keep, dim=-1)
        return torch.fft.ifft2(torch.fft.fft2(x) * keep)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """x - Mhat x: the part of x the process never changes."""
        return x - self.high_pass(x)

    # -- the process --------------------------------------------------------------------------
    def _per_item(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = v.to(device=like.device, dtype=like.real.dtype)
        return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)) if v.ndim else v

    def marginal(self, x0: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of x_t given x_0; ``t`` a scalar or one time per leading item ``[B]``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        c = self._per_item(self.log_mean_coeff(t), x0)
        return x0 + torch.expm1(c) * self.high_pass(x0), self._per_item(self.std(t), x0)

    def perturb(self, x0: torch.Tensor, t: TimeLike, z: torch.Tensor) -> torch.Tensor:
        """x_t = mean + std Mhat z (``z`` standard complex normal, shape of ``x0``)."""
        mean, std = self.marginal(x0, t)
        return mean + std * self.high_pass(z)

    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward drift -1/2 beta Mhat x and diffusion coefficient sqrt(beta) (applied to Mhat dw)."""
        b = self._per_item(self.beta(torch.as_tensor(t, dtype=torch.float64)), x)
        return -0.5 * b * self.high_pass(x), b.sqrt()


def hfs_score_fn(model) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``score_fn(x, sigma)`` of a VE-type ``DiffusionModel`` with prediction type ``"score"``:
    the network at noise level ``sigma`` (scalar or ``[B]``), returning raw / sigma.  Autograd is
    kept (training); wrap in ``torch.no_grad()`` for sampling."""
    from .wrapper import is_ve

    sched = getattr(model, "schedule", None)
    if getattr(model, "prediction_type", None) != "score" or not is_ve(sched) or not hasattr(sched, "t_of_sigma"):
        raise ValueError("model: an HFS prior is a DiffusionModel with prediction_type 'score' on a VE schedule "
                         "(conditioned on the noise level sigma), got "
                         f"{getattr(model, 'prediction_type', type(model).__name__)!r} on {type(sched).__name__}")

    def score_fn(x: torch.Tensor, sigma) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        t = sched.t_of_sigma(sig).to(torch.float32)
        s = sig.to(device=x.device, dtype=x.real.dtype)
        s = s.reshape(s.shape + (1,) * (x.ndim - s.ndim)) if s.ndim else s
        return model.raw(x, t.to(x.device)) / s
    return score_fn


def hfs_loss(score, x0: torch.Tensor, sde: HFSSDE, generator: torch.Generator, *, eps: float = 1e-5) -> torch.Tensor:
    """One Monte-Carlo estimate of the HFS denoising-score-matching loss on clean complex images.

    ``score``: a VE ``"score"`` ``DiffusionModel`` (see `hfs_score_fn`) or any ``score_fn(x, sigma)``
    with ``sigma`` of shape ``[B]``; ``x0`` complex ``[B, H, W]``; ``generator`` supplies t ~ U[eps, 1]
    (one per image, as the repo) and z ~ CN(0, I).  Returns the scalar loss (module docstring).
    """
    if not isinstance(sde, HFSSDE):
        raise ValueError(f"sde: expected an HFSSDE, got {type(sde).__name__}")
    if not isinstance(x0, torch.Tensor) or not x0.is_complex() or x0.ndim != 3:
        raise ValueError(f"x0: expected complex images [B, H, W], got {getattr(x0, 'dtype', type(x0).__name__)} "
                         f"{tuple(getattr(x0, 'shape', ()))}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator: expected a torch.Generator (seeds are explicit)")
    if not 0 <= eps < 1:
        raise ValueError(f"eps: expected 0 <= eps < 1, got {eps}")
    score_fn = hfs_score_fn(score) if hasattr(score, "raw") else score
    b = x0.shape[0]
    if generator.device.type != x0.device.type:
        raise ValueError(f"generator: on {generator.device} but x0 is on {x0.device}")
    t = torch.rand(b, generator=generator, device=x0.device, dtype=torch.float64).cpu() * (1 - eps) + eps
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = sde.marginal(x0, t)
    xt = mean + std * sde.high_pass(z)
    s = score_fn(xt, sde.std(t).to(torch.float32))
    d = sde.high_pass(std * s + z)
    return torch.view_as_real(d).float().pow(2).mean()

