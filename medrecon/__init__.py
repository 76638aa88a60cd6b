"""medrecon: accelerated MRI/CT reconstruction with diffusion priors.

The public API in one place (see README.md):

- ``reconstruct(kspace, mask, method=..., **options)`` -> ``ReconResult``; methods are registered
  by name (``list_methods()``), the CLI ``medrecon recon`` runs the same call on files;
- ``reconstruct_file(path, ...)`` for fastMRI HDF5 files (the JSON record the CLI prints);
- ``Reconstructor(method, device=..., **options)``: resolve a method (and load its model) once,
  then reconstruct many inputs;
- ``sample(eps_fn, x_T, solver=..., steps=N, betas=..., dc=None)`` drives every generic solver
  with a diffusers/MONAI-style eps-model;
- ``GaussianPrior``: the analytic prior with exact eps/x0/ODE/posterior, for benchmarking;
- metrics with fastMRI's conventions (``nmse``, ``psnr``, ``ssim``, ``evaluate``).

Sub-packages: ``medrecon.physics`` (operators, FFTs, masks, coils), ``medrecon.models``
(networks, schedules, training, checkpoints), ``medrecon.datasets`` (file formats, simulators),
``medrecon.accel`` (DeepCache, timestep tuning), ``medrecon.cli``.
"""
from medrecon.metrics import evaluate, nmse, psnr, ssim
from medrecon.provenance import __version__
from medrecon.pipeline import MaskSpec, reconstruct_file
from medrecon.reconstruct import ReconResult, reconstruct
from medrecon.reconstructor import Reconstructor
from medrecon.registry import get_method, list_methods, register_method
from medrecon.sample import SOLVERS, sample, solver_options, timesteps_for
from medrecon.spirit_cg import spirit_cg
from medrecon.gaussian_prior import GaussianPrior


__all__ = [
    "reconstruct", "ReconResult", "Reconstructor", "reconstruct_file", "MaskSpec",
    "list_methods", "get_method", "register_method",
    "sample", "SOLVERS", "solver_options", "timesteps_for", "GaussianPrior", "spirit_cg",
    "nmse", "psnr", "ssim", "evaluate", "__version__",
]
