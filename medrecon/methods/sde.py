"""HFS-SDE and SPIRiT-Diffusion as ``medrecon.reconstruct`` methods (importing this module registers them).

Both need a VE-type "score" checkpoint (the network conditioned on the noise level sigma), not the
VP priors of `medrecon.methods.vp`: an HFS prior trained with ``medrecon.models.hfs_process.hfs_loss``
(its ``HFSSDE`` stored in the checkpoint config as ``extra["hfs"] = sde.to_dict()``; default
``brain128-hfs``); SPIRiT-Diffusion takes a per-coil complex VE score prior or a VP prior of
coil-combined images (converted and lifted; default ``brain128-vp``).  Checkpoints, normalisation
and seeds as in `medrecon.methods.vp`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import acs_width, calibration_region
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.hfs_sde import hfs_sde
from medrecon.posterior.spirit_diffusion import spirit_diffusion
from medrecon.registry import register_method, seeded_generator

from .priors import (HFS_PRIOR, VP_PRIOR, accelerated, load_score_prior, load_spirit_prior, network_eps,
                     network_score, support_mask, zero_filled_scale)

__all__ = ["HFSSDEOptions", "SpiritDiffusionOptions"]


@dataclass
class HFSSDEOptions:
    checkpoint: str = HFS_PRIOR
    steps: int = 1000
    snr: float = 0.16
    mse: float = 2.5
    corrector_mse: float = 0.1
    n_corrector: int = 1
    dc: str = "hard"
    acs: int = 0  # M_L width; 0: the checkpoint's extra["hfs"] (else 16), narrowed to the mask's ACS lines if fewer
    tweedie: bool = True  # last step: Tweedie's E[x0 | x_t] instead of the Euler-Maruyama mean
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)


@register_method("hfs-sde", HFSSDEOptions, "HFS-SDE: diffusion on the high frequencies, low frequencies "
                 "from the data (Cao et al. TMI 2024)", needs_smaps=True, kind="diffusion", prior=HFS_PRIOR)
def _hfs_sde(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    from medrecon.models.hfs_process import HFSSDE

    if smaps is None:
        raise ValueError("method 'hfs-sde' needs coil sensitivities (smaps)")
    model, extra = load_score_prior(opts.checkpoint, kspace.device, "hfs-sde", HFS_PRIOR, cache=priors)
    model = accelerated(model, "hfs-sde", opts, kspace.device, priors, HFS_PRIOR)
    sde = HFSSDE.from_dict(extra["hfs"]) if isinstance(extra.get("hfs"), dict) else HFSSDE()
    if opts.acs:
        sde = HFSSDE(int(opts.acs), sde.beta_min, sde.beta_max, sde.region)
    elif sde.region == "lines" and 1 <= acs_width(mask) < sde.acs:  # small images: fewer central lines than
        sde = HFSSDE(acs_width(mask), sde.beta_min, sde.beta_max, sde.region)  # the prior's block; diffuse the rest
    A = MultiCoilMRI(smaps, mask)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        scale = zero_filled_scale(A.adjoint(kspace))
    g = generator if generator is not None else seeded_generator(None, kspace.device)
    x, nfe = hfs_sde(network_score(model, support_mask(smaps, opts)), A, kspace / scale[..., None, None, None],
                     sde, opts.steps, g, snr=opts.snr, mse=opts.mse, corrector_mse=opts.corrector_mse,
                     n_corrector=opts.n_corrector, dc=opts.dc, tweedie=opts.tweedie, callback=callback)
    return x * scale[..., None, None], nfe


@dataclass
class SpiritDiffusionOptions:
    checkpoint: str = VP_PRIOR  # a VP prior of coil-combined images (lifted) or a per-coil VE score prior
    steps: int = 1000
    eta: float = 0.45
    snr: float = 0.7
    mse: float = 0.2
    corrector_mse: float = 0.2
    n_corrector: int = 0  # the paper: 1 (snr 0.7); 0 measured best with brain128-vp (docs/bench_recon.md)
    dc: str = "hard"
    dc_cg: int = 10  # hard DC in range(S) by 10 CG steps (0: the repo's per-coil replacement; docstring)
    sigma_min: float = 0.0  # 0: the checkpoint's (VE: its sigma_min; VP: sqrt(beta_0 / (1 - beta_0)))
    sigma_max: float = 0.0  # 0: the checkpoint's (VE: its sigma_max; VP: sqrt((1 - abar_T) / abar_T)); paper 348
    kernel_width: int = 7  # the repo's; narrower (odd, >= 3) when the mask has fewer central lines
    normalize: bool = True
    support: bool = True  # VP prior: rho = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)


@register_method("spirit-diffusion", SpiritDiffusionOptions, "SPIRiT-Diffusion: per-coil SDE with the SPIRiT "
                 "consistency drift (Cui et al. TMI 2024); a VP image prior (default brain128-vp) lifted to "
                 "coil space, or a per-coil VE score prior", needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _spirit_diffusion(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    """VP checkpoints are priors of coil-combined images rho = S^H x: their eps gives the VE score of rho
    (`ve_score_from_vp`) and `coil_score_from_image_prior` lifts it to coil space (1 network call per
    score); VE "score" checkpoints are per-coil networks (C calls per score, the paper's set-up)."""
    from medrecon.physics.spirit import LAM_SPIRIT_DIFFUSION, spirit_calibrate
    from medrecon.posterior.spirit_diffusion import coil_score_from_image_prior, ve_score_from_vp

    if smaps is None:
        raise ValueError("method 'spirit-diffusion' needs coil sensitivities (smaps)")
    model, _ = load_spirit_prior(opts.checkpoint, kspace.device, cache=priors)
    model = accelerated(model, "spirit-diffusion", opts, kspace.device, priors)
    vp = getattr(model.schedule, "betas", None) is not None  # a VP image prior (else per-coil VE scores)
    acs = acs_width(mask)
    kw = opts.kernel_width if acs >= opts.kernel_width else acs - (1 - acs % 2)  # the largest odd width <= acs
    if kw < 3:
        raise ValueError(f"method 'spirit-diffusion': the SPIRiT kernel (at least 3x3) is calibrated from the fully "
                         f"sampled centre, but the mask has only {acs} central lines")
    calib = calibration_region(mask, kspace.shape[-2])
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:  # a VP image prior: its training scale, max |A^H y| as the VP methods; else max RSS
        scale = zero_filled_scale(MultiCoilMRI(smaps, mask).adjoint(kspace) if vp else rss(ifft2c(kspace)))
    y = kspace / scale[..., None, None, None]
    kernel = spirit_calibrate(y, calib_width=calib, kernel_width=kw, lam=LAM_SPIRIT_DIFFUSION)
    if vp:
        if model.in_channels != 2:
            raise ValueError(f"method 'spirit-diffusion': checkpoint {opts.checkpoint!r} has {model.in_channels} "
                             f"input channel(s); a complex-image (2-channel) prior is required")
        smaps = smaps.to(device=kspace.device, dtype=kspace.dtype)
        score = coil_score_from_image_prior(ve_score_from_vp(network_eps(model, support=support_mask(smaps, opts)),
                                                             model.schedule), smaps)
        edm = model.schedule.edm_sigma(torch.tensor([0.0, model.schedule.num_train_timesteps - 1.0]))
        lo, hi, per = float(edm[0]), float(edm[1]), 1
    else:
        score, per = network_score(model), None
        lo, hi = float(model.schedule.sigma_min), float(model.schedule.sigma_max)
    g = generator if generator is not None else seeded_generator(None, kspace.device)
    x, nfe = spirit_diffusion(score, mask, y, kernel, smaps, opts.steps, g,
                              sigma_min=opts.sigma_min or lo, sigma_max=opts.sigma_max or hi, eta=opts.eta,
                              snr=opts.snr, mse=opts.mse, corrector_mse=opts.corrector_mse,
                              n_corrector=opts.n_corrector, dc=opts.dc, nfe_per_score=per,
                              in_range=True, dc_cg=opts.dc_cg, callback=callback)
    return x * scale[..., None, None], nfe
