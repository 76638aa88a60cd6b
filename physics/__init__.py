"""Measurement operators and FFT kernels (`medrecon.physics`): MRI (FFTs, masks, SENSE, ESPIRiT,
SPIRiT) and CT (parallel/fan-beam projectors, FBP, low-dose noise); imports no other layer."""
from .coils import espirit, estimate_smaps, rss, sense_combine
from .ct import (DETECTORS, FILTERS, LOWDOSE_EPS, MU_WATER, FanBeam, ParallelBeam,
                 check_angle_coverage, fbp, fourier_filter, hu_to_mu, log_transform, mu_to_hu,
                 simulate_lowdose)
from .fft import fft1c, fft2c, fftc, ifft1c, ifft2c, ifftc
from .masks import KINDS as MASK_KINDS
from .masks import SampledMask, acs_width, calibration_region, center_mask, make_mask, sample_mask
from .mri import MultiCoilMRI, SingleCoilMRI
from .spirit import LAM_SPIRIT, LAM_SPIRIT_DIFFUSION, SpiritOperator, spirit_calibrate

__all__ = [
    "fft1c", "fft2c", "fftc", "ifft1c", "ifft2c", "ifftc",
    "MultiCoilMRI", "SingleCoilMRI",
    "MASK_KINDS", "SampledMask", "center_mask", "make_mask", "sample_mask", "acs_width",
    "calibration_region", "espirit", "estimate_smaps", "rss", "sense_combine",
    "LAM_SPIRIT", "LAM_SPIRIT_DIFFUSION", "SpiritOperator", "spirit_calibrate",
    "ParallelBeam", "FanBeam", "DETECTORS", "fbp", "FILTERS", "fourier_filter",
    "check_angle_coverage", "MU_WATER", "LOWDOSE_EPS", "hu_to_mu", "mu_to_hu", "log_transform",
    "simulate_lowdose",
]
