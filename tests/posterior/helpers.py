"""Shared test geometry of the posterior tests (not collected: no ``test_`` prefix).

- the exact-SENSE setting of ``test_vp_sense_exact`` / ``test_sde_sense_exact``: 16x16 images, the
  ``GaussianPrior`` p = 1.5, k0 = 1 (``PR``), linear betas (``BETAS``, exact ``EPS``) and ``sense_geometry``;
- ``two_smooth_maps``: two normalised Gaussian-profile maps with a linear phase (CG data step, no ``project``);
- ``WrongSign``: a wrong but self-consistent operator (FFT sign convention flipped) that a sampler's
  data step must not pass with.
"""
import math

import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.schedules import make_betas
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.mri import MultiCoilMRI

H = W = 16  # the exact-SENSE setting
NPIX = H * W
CT = torch.complex128  # the dense exact posterior's dtype
PR = GaussianPrior((H, W), p=1.5, k0=1.0)
BETAS = make_betas("linear", 1000)
EPS = PR.eps_fn(BETAS)


def sense_geometry(H: int, W: int, dtype=torch.complex128):
    """(smaps, mask, operator): 3 unit-magnitude coil maps of smooth non-integer phase and 4 of 16
    columns (R = 4): A = M F S has rank 3/4 of the pixels and is well conditioned on its range (cond 23),
    so CG reaches round-off in 20 steps and the samplers' data step equals A^+ exactly."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64),
                            torch.linspace(-1, 1, W, dtype=torch.float64), indexing="ij")
    smaps = (torch.stack([torch.exp(1j * math.pi * (0.37 * c * xx + 0.21 * c * yy + 0.3 * c * xx ** 2))
                          for c in range(3)]) / math.sqrt(3)).to(dtype)
    mask = torch.zeros(1, W, dtype=torch.bool)
    mask[:, [0, 4, 8, 12]] = True
    return smaps, mask, MultiCoilMRI(smaps, mask)


def two_smooth_maps(H: int, W: int) -> torch.Tensor:
    """Two coil maps [2, H, W] (complex64), normalised to sum |S_c|^2 = 1."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    smaps = torch.stack([torch.exp(-(xx - 0.5) ** 2 + 0.3j * yy), torch.exp(-(xx + 0.5) ** 2 - 0.2j * yy)])
    return (smaps / (smaps.abs() ** 2).sum(0).sqrt()).to(torch.complex64)


class WrongSign:
    """A wrong but self-consistent operator: the FFT sign convention flipped, A = M F^H (adjoint F M);
    no ``mask`` attribute."""

    def __init__(self, mask: torch.Tensor):
        self.m = mask

    def forward(self, x):
        return ifft2c(x) * self.m

    def adjoint(self, y):
        return fft2c(y * self.m)

    def normal(self, x):
        return self.adjoint(self.forward(x))
