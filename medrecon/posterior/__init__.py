"""Posterior samplers for y = A x (+ noise) with a diffusion prior, one method per module.

Each takes ``(eps_fn, operator, y, betas, steps, generator, **options)`` and returns ``(x0, nfe)``:
``eps_fn(x, t)`` is the noise predictor on the discrete training timesteps of ``betas`` (the
convention of ``medrecon.sample``), ``operator`` any ``medrecon.physics`` operator
(forward/adjoint/normal; ``project`` is used where present), complex images ``[..., H, W]``,
randomness only through the explicit ``torch.Generator``, device following ``y``.  Every sampler
takes ``callback(i, x)``, called with the step index and the current state after each step.
Shared plumbing (abar table, noise, input checks, Langevin corrector, gradient rescaling) is in
``medrecon.posterior.common``.

- ``dds``: Decomposed Diffusion Sampler (Tweedie + CG data step + DDIM), any generic solver.
- ``ddnm`` / ``diffpir``: range-null-space projection / proximal data step.
- ``dps``: diffusion posterior sampling (gradient through the network).
- ``ccdf``: come-closer-diffuse-faster warm start on any generic solver.
- ``score_mri`` / ``score_mri_ssos``: Chung & Ye's predictor-corrector with hard data consistency.
- ``hfs_sde``: HFS-SDE (diffusion on the high frequencies only; its own SDE, ``score_fn(x, sigma)``).
- ``spirit_diffusion``: SPIRiT-Diffusion on per-coil images (its own VE SDE, ``score_fn(x, sigma)``).
"""
from .ccdf import ccdf, initial_estimate
from .ddnm import ddnm, ddnm_dc, diffpir
from .dds import dds, dds_dc
from .dps import dps
from .score_mri import score_mri, score_mri_ssos

__all__ = ["dds", "dds_dc", "ddnm", "ddnm_dc", "diffpir", "dps", "ccdf", "initial_estimate",
           "score_mri", "score_mri_ssos"]

from .hfs_sde import HFSSDE, gaussian_hfs_score, hfs_sde  # noqa: E402
from .spirit_diffusion import (coil_projector, coil_score_from_image_prior, spirit_diffusion,  # noqa: E402
                               spirit_drift, ve_score_from_vp)

__all__ += ["hfs_sde", "HFSSDE", "gaussian_hfs_score", "spirit_diffusion", "spirit_drift", "coil_projector",
            "coil_score_from_image_prior", "ve_score_from_vp"]
