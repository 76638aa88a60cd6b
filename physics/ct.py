"""CT physics (`medrecon.physics.ct`): projectors, FBP, units and low-dose simulation.

- `ParallelBeam`, `FanBeam` (``detector="equiangular" | "flat"``): batched ray-driven
  projectors ``image [..., N, N] -> sinogram [..., n_angles, n_detectors]`` with the exact
  matched backprojector ``adjoint`` and ``normal`` (module `ct_geometry`).
- `fbp` (ramp, shepp-logan, cosine, hamming, hann): parallel beam over [0, pi), full-scan fan
  beam over [0, 2 pi) or, with ``short_scan=True``, Parker-weighted over pi + 2 gamma_max
  (modules `ct_fbp`, `ct_parker`); parallel FBP equals scikit-image ``iradon``.
- `hu_to_mu`, `mu_to_hu`, `MU_WATER`, `simulate_lowdose`, `log_transform` (module `ct_noise`).
"""
from .ct_fbp import FILTERS, check_angle_coverage, fbp, fourier_filter
from .ct_geometry import DETECTORS, FanBeam, ParallelBeam
from .ct_parker import parker_weights, short_scan_range
from .ct_noise import LOWDOSE_EPS, MU_WATER, hu_to_mu, log_transform, mu_to_hu, simulate_lowdose

__all__ = [
    "ParallelBeam", "FanBeam", "DETECTORS",
    "fbp", "FILTERS", "fourier_filter", "check_angle_coverage", "parker_weights", "short_scan_range",
    "MU_WATER", "LOWDOSE_EPS", "hu_to_mu", "mu_to_hu", "log_transform", "simulate_lowdose",
]
