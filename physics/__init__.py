"""Measurement operators and FFT kernels (`medrecon.physics`); imports no other medrecon layer."""
from .coils import espirit, rss, sense_combine
from .fft import fft1c, fft2c, fftc, ifft1c, ifft2c, ifftc
from .masks import KINDS as MASK_KINDS
from .masks import SampledMask, center_mask, make_mask, sample_mask
from .mri import MultiCoilMRI, SingleCoilMRI
from .spirit import LAM_SPIRIT, LAM_SPIRIT_DIFFUSION, SpiritOperator, spirit_calibrate

__all__ = [
    "fft1c", "fft2c", "fftc", "ifft1c", "ifft2c", "ifftc",
    "MultiCoilMRI", "SingleCoilMRI",
    "MASK_KINDS", "SampledMask", "center_mask", "make_mask", "sample_mask",
    "espirit", "rss", "sense_combine",
    "LAM_SPIRIT", "LAM_SPIRIT_DIFFUSION", "SpiritOperator", "spirit_calibrate",
]
