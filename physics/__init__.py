"""Measurement operators and FFT kernels (`medrecon.physics`); imports no other medrecon layer."""
from .fft import fft1c, fft2c, fftc, ifft1c, ifft2c, ifftc
from .mri import MultiCoilMRI, SingleCoilMRI

__all__ = ["fft1c", "fft2c", "fftc", "ifft1c", "ifft2c", "ifftc", "MultiCoilMRI", "SingleCoilMRI"]
