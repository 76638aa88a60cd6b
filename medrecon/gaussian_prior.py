"""Analytic oracle: a stationary Gaussian image prior whose denoiser, PF-ODE and posterior are exact.

What: complex circular images x ~ CN(0, F^H diag(lambda) F) on an H x W grid, F = ``fft2c`` (centered,
orthonormal), with a power-law spectrum lambda(k) = c (|k|^2 + k0^2)^(-p) (k in cycles per image,
centered; c makes mean(lambda) = 1, i.e. unit mean pixel variance).  Complex circular was chosen
because MRI images are complex; the k-space coefficients are then independent CN(0, lambda(k)).

Why: every solver and posterior sampler is tested against answers derived here, not against itself
(STYLE.md "Analytic oracles").  Everything is diagonal in k-space.  For the VP state
x_t = alpha x0 + sigma eps (alpha^2 = abar, sigma^2 = 1 - abar, eps ~ CN(0, I)):

- exact MMSE denoiser:  F x0_hat = alpha lambda / (abar lambda + 1 - abar) F x_t,
                        F eps_hat = sigma / (abar lambda + 1 - abar) F x_t;
- exact probability-flow ODE (Song et al., ICLR 2021, Eq. 13): in z = x/alpha with noise level
  s = sigma/alpha, dz/ds = (z - E[x0|z]) / s = s/(lambda + s^2) z, so z(k) = sqrt(lambda + s^2) u(k)
  with u constant, i.e. F x_t = sqrt(alpha_t^2 lambda + sigma_t^2) u: the map x_T -> x_end multiplies
  frequency k by sqrt(abar_end lambda + 1 - abar_end) / sqrt(abar_T lambda + 1 - abar_T);
- exact posterior for y = M F x + n, n ~ CN(0, sigma_n^2 I) on the measured samples: per k,
  measured: mean = lambda / (lambda + sigma_n^2) y, var = lambda sigma_n^2 / (lambda + sigma_n^2);
  unmeasured: mean 0, var lambda.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from medrecon.physics.fft import fft2c, ifft2c
from medrecon.solvers.base import alphas_cumprod, noise_like


class GaussianPrior:
    """Stationary complex Gaussian prior on [H, W] images (see module docstring)."""

    def __init__(self, shape: tuple[int, int], p: float = 1.5, k0: float = 2.0, *,
                 device: Optional[torch.device] = None):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape: expected (H, W) with positive sizes, got {shape!r}")
        if p < 0 or k0 <= 0:
            raise ValueError(f"p, k0: expected p >= 0 and k0 > 0, got {p}, {k0}")
        h, w = shape
        ky = torch.arange(h, dtype=torch.float64) - h // 2
        kx = torch.arange(w, dtype=torch.float64) - w // 2
        lam = (ky[:, None] ** 2 + kx[None, :] ** 2 + k0 ** 2) ** (-p)
        self.shape = (h, w)
        self.lam = (lam / lam.mean()).to(device)  # float64 spectrum, mean 1

    # ------------------------------------------------------------ schedule helpers
    @staticmethod
    def abar_at(alphas_cumprod: torch.Tensor, t) -> float:
        """abar at a (possibly fractional) training timestep, interpolating sigma = sqrt((1-abar)/abar)
        linearly as diffusers' Euler/Heun do (exact at integers); t < 0 gives 1."""
        t = float(t)
        if t < 0:
            return 1.0
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        sig = ((1 - acp) / acp).sqrt().numpy()
        s = float(np.interp(t, np.arange(len(sig)), sig))
        return 1.0 / (1.0 + s * s)

    def _k(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_complex() or tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"x: expected a complex tensor [..., {self.shape[0]}, {self.shape[1]}], "
                             f"got {x.dtype} {tuple(x.shape)}")
        return fft2c(x)

    def _lam(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam.to(device=x.device, dtype=torch.float32 if x.dtype == torch.complex64 else torch.float64)

    # ------------------------------------------------------------ exact predictors
    def x0_hat(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """E[x0 | x_t] at noise level abar."""
        lam = self._lam(x_t)
        return ifft2c(abar ** 0.5 * lam / (abar * lam + (1 - abar)) * self._k(x_t))

    def eps_hat(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """E[eps | x_t] at noise level abar."""
        lam = self._lam(x_t)
        return ifft2c((1 - abar) ** 0.5 / (abar * lam + (1 - abar)) * self._k(x_t))

    def eps_fn(self, betas: torch.Tensor):
        """``eps_fn(x, t)`` for ``medrecon.sample.sample`` on the training schedule ``betas``."""
        acp = alphas_cumprod(betas)

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if torch.as_tensor(t).ndim == 1:  # a window: state x[k] at time t[k] (medrecon.solvers.paradigms)
                return torch.stack([self.eps_hat(xk, self.abar_at(acp, tk)) for xk, tk in zip(x, t)])
            return self.eps_hat(x, self.abar_at(acp, t))
        return eps_fn

    # ------------------------------------------------------------ exact flows and samples
    def pf_ode(self, x_T: torch.Tensor, abar_T: float, abar_end: float = 1.0) -> torch.Tensor:
        """Exact probability-flow ODE map from noise level abar_T to abar_end (1 = clean)."""
        lam = self._lam(x_T)
        gain = ((abar_end * lam + 1 - abar_end) / (abar_T * lam + 1 - abar_T)).sqrt()
        return ifft2c(gain * self._k(x_T))

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               dtype: torch.dtype = torch.complex64) -> torch.Tensor:
        """n prior samples [n, H, W]."""
        z = torch.randn((n, *self.shape), generator=generator, dtype=dtype, device=self.lam.device)
        return ifft2c(self._lam(z).sqrt() * z)

    def noisy(self, x0: torch.Tensor, abar: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The VP state sqrt(abar) x0 + sqrt(1 - abar) eps."""
        return abar ** 0.5 * x0 + (1 - abar) ** 0.5 * noise_like(x0, generator)

    # ------------------------------------------------------------ exact posterior
    def posterior(self, y: torch.Tensor, mask: torch.Tensor, sigma_n: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) per k-space sample of x given y = M F x + n (y zero off the mask).

        ``mask`` is bool, broadcastable to [H, W]; ``var`` is real.  Image-domain mean: ifft2c(mean).
        """
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor broadcastable to {self.shape}, got {mask.dtype}")
        if sigma_n < 0:
            raise ValueError(f"sigma_n: expected >= 0, got {sigma_n}")
        lam = self._lam(y)
        m = torch.broadcast_to(mask.to(y.device), y.shape)
        gain = lam / (lam + sigma_n ** 2)
        mean = torch.where(m, gain * y, torch.zeros_like(y))
        var = torch.where(m, lam * sigma_n ** 2 / (lam + sigma_n ** 2), lam.expand(y.shape))
        return mean, var

    def measure(self, x: torch.Tensor, mask: torch.Tensor, sigma_n: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """y = M (F x + n), n ~ CN(0, sigma_n^2)."""
        k = self._k(x)
        if sigma_n > 0:
            k = k + sigma_n * noise_like(k, generator)
        return torch.where(torch.broadcast_to(mask.to(k.device), k.shape), k, torch.zeros_like(k))
