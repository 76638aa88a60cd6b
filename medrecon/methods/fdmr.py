"""FDMR as a ``medrecon.reconstruct`` method (importing this module registers it): the DDGAN
generator's checkpoint, the optional VP refinement prior, the ``normalize`` scale.  The three-stage
sampler and its options (`FDMROptions`) are `medrecon.posterior.fdmr`, which cites the reference code it
follows (NVlabs/denoising-diffusion-gan for the DDGAN chain; FDMR itself has no public code).  This
module only loads checkpoints and rescales."""
from __future__ import annotations

import torch

from medrecon.builtin_priors import resolve_checkpoint
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.fdmr import FDMROptions, fdmr
from medrecon.registry import register_method, seeded_generator

from .priors import (DDGAN_PRIOR, DEFAULT_PRIORS, PriorCache, checkpoint_key, load_prior, network_eps,
                     zero_filled_scale)

__all__ = ["load_fdmr_generator"]


def load_fdmr_generator(checkpoint: str, device: torch.device, use_ema: bool = True,
                        cache: PriorCache | None = None):
    """The (EMA, when saved and ``use_ema``) generator of a DDGAN checkpoint (or of the latest
    ``step-*`` of a run folder), held by ``cache`` (None: `DEFAULT_PRIORS`), frozen
    (``requires_grad=False``) and in eval mode."""
    from medrecon.models.ddgan import load_generator
    from medrecon.models.train import latest_checkpoint

    path = resolve_checkpoint(checkpoint or "", DDGAN_PRIOR)  # "": the shipped generator
    if not (path / "config.json").is_file():
        last = latest_checkpoint(path)
        if last is None:
            raise ValueError(f"method 'fdmr': checkpoint {str(path)!r} is neither a DDGAN checkpoint directory "
                             f"(config.json + generator.safetensors) nor a run folder holding step-* checkpoints")
        path = last
    return (DEFAULT_PRIORS if cache is None else cache).get(
        checkpoint_key("ddgan", path, device, bool(use_ema)),
        lambda: load_generator(path, map_location=device, use_ema=use_ema).requires_grad_(False))

def _refine_prior(name: str, device: torch.device, cache: PriorCache | None):
    """(eps_fn, betas) of a VP eps checkpoint given as a path or a builtin prior name."""
    model, betas = load_prior(name, device, "fdmr", cache=cache)
    return network_eps(model), betas

@register_method("fdmr", FDMROptions, "FDMR: DDGAN prior, fast DC'd generation + early-stopped per-slice "
                 "adaptation + refinement (MRI 2025); shipped DDGAN brain128-ddgan", needs_smaps=True,
                 kind="diffusion", prior=DDGAN_PRIOR)
def _fdmr(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    if smaps is None:
        raise ValueError("method 'fdmr' needs coil sensitivities (smaps)")
    G = load_fdmr_generator(opts.checkpoint, kspace.device, opts.ema, priors)
    A = MultiCoilMRI(smaps, mask)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        scale = zero_filled_scale(A.adjoint(kspace))
    g = generator if generator is not None else seeded_generator(None, kspace.device)
    eps = betas = None
    if opts.refinement and opts.refine_prior:
        eps, betas = _refine_prior(opts.refine_prior, kspace.device, priors)
    x, nfe = fdmr(G, kspace / scale[..., None, None, None], mask, smaps, g, opts, refine_eps=eps,
                  refine_betas=betas, callback=callback)
    return x * scale[..., None, None], nfe
