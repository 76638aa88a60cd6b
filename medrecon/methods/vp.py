"""The VP posterior samplers as ``medrecon.reconstruct`` methods (importing this module registers them).

Registration, option parsing and checkpoint loading only: each algorithm, with the repository, file and
lines of the reference code it follows (HJ-harry/DDS, wyhuai/DDNM, yuanzhi-zhu/DiffPIR, HJ-harry/score-MRI;
CCDF has none public), is in its `medrecon.posterior` module.

Names: ``dds``, ``ddnm``, ``diffpir``, ``dps``, ``ccdf``, ``score-mri``.  Each takes a ``checkpoint``
option (`medrecon.methods.priors`), default ``brain128-vp`` (trained on the simulated brain,
128-wide images: docs/priors.md).  A complex (2-channel) network is required, except for
``score-mri``, which runs a real (1-channel) prior in its real/imaginary variant.

Conventions: the operator is SENSE ``A = M F S`` with the given or ESPIRiT maps (``score-mri``:
``variant="ssos"`` per-coil with RSS combination, no maps; ``"sense"`` and ``"hybrid"`` need
``smaps=``).  With ``normalize=True`` each slice's k-space is divided by max |A^H y| (the
zero-filled image's maximum, the scale the priors are trained at) and the image multiplied back,
so ``sigma_n`` (diffpir) is in those units.  ``seed=None`` in ``reconstruct`` means
`medrecon.registry.DEFAULT_SEED`: results are always reproducible.

Timestep shifts (`medrecon.accel.fit_timestep_shifts`, Xia et al. CVPR 2024) stored with the
checkpoint are applied by the methods on the DDIM-with-DC grid (``dds``, ``ddnm``, ``ccdf`` with
``solver="ddim"``; ``diffpir``): the network is queried at t + delta_t on each step, when the shifts
were tuned for that grid (solver ``ddim``, the same ``steps``); otherwise, or with
``timestep_shifts="off"``, at the grid's own times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from medrecon.physics.coils import estimate_smaps, rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.ccdf import ccdf
from medrecon.posterior.ddim_dc import grid
from medrecon.posterior.ddnm import ddnm, diffpir
from medrecon.posterior.dds import dds
from medrecon.posterior.dps import dps
from medrecon.posterior.score_mri import score_mri, score_mri_hybrid, score_mri_ssos
from medrecon.registry import register_method, seeded_generator

from .distilled import check_distilled, default_cg_iters, default_eta
from .priors import (VP_PRIOR, accelerated, load_prior, load_timestep_shifts, network_eps, support_mask,
                     zero_filled_scale)

__all__ = ["DDSOptions", "DDNMOptions", "DiffPIROptions", "DPSOptions", "CCDFOptions", "ScoreMRIOptions",
           "SCORE_MRI_VARIANTS", "TIMESTEP_SHIFTS"]

TIMESTEP_SHIFTS = ("on", "off")


def _setup(kspace, mask, smaps, opts, generator, method, priors, need_complex=True):
    if smaps is None:
        raise ValueError(f"method {method!r} needs coil sensitivities (smaps)")
    model, betas = load_prior(opts.checkpoint, kspace.device, method, cache=priors)
    check_distilled(opts, method, len(betas))  # a distilled student runs on its own grid only
    model = accelerated(model, method, opts, kspace.device, priors)
    if need_complex and model.in_channels != 2:
        raise ValueError(f"method {method!r}: checkpoint {opts.checkpoint!r} has {model.in_channels} input "
                         f"channel(s); a complex-image (2-channel) prior is required")
    A = MultiCoilMRI(smaps, mask)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        scale = zero_filled_scale(A.adjoint(kspace))
    y = kspace / scale[..., None, None, None]
    gen = generator if generator is not None else seeded_generator(None, kspace.device)
    return model, betas, A, y, scale[..., None, None], gen


def _grid_eps(model, betas, smaps, opts, method: str, ddim_grid: bool = True):
    """The network's eps for a DDIM-with-DC method: support (``opts.support``), DeepCache
    (``opts.cache``) and the checkpoint's timestep shifts (`_shifted`)."""
    eps = network_eps(model, support=support_mask(smaps, opts), cache=opts.cache)
    return _shifted(eps, opts, method, len(betas), ddim_grid)


def _shifted(eps, opts, method: str, n_train: int, ddim_grid: bool = True):
    """``eps`` queried at the checkpoint's tuned times t + delta_t (module docstring) when
    ``opts.timestep_shifts`` is "on", the run is on the DDIM-with-DC grid and the stored shifts were
    tuned for it; else ``eps`` itself."""
    if opts.timestep_shifts not in TIMESTEP_SHIFTS:
        raise ValueError(f"{method} option timestep_shifts: expected one of {TIMESTEP_SHIFTS}, "
                         f"got {opts.timestep_shifts!r}")
    if opts.timestep_shifts == "off" or not ddim_grid:
        return eps
    shifts = load_timestep_shifts(opts.checkpoint, method)
    if shifts is None or shifts.solver != "ddim":
        return eps
    if sorted(shifts.timesteps) != sorted(grid(opts.steps, n_train)[:-1].tolist()):
        return eps  # tuned for another step count: the plain grid
    return shifts.wrap(eps, strict=False)


@dataclass
class DDSOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 50
    gamma: float | None = None  # None: hard data step (DDS noiseless branch); > 0: (I + gamma A^H A) x = ...
    cg_iters: int | None = None  # None: 10 (repo --CG_iter 5; 10 better, posterior/dds.py) or a distilled chain's
    eta: float | None = None  # None: 0.85 (the repos'), or the eta a distilled checkpoint was trained with
    solver: str = "ddim"  # "ddim": the DDS/DDNM reference update (posterior/ddim_dc.py); else a generic solver
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)
    timestep_shifts: str = "on"  # the checkpoint's tuned shifts, when stored for this grid ("off": never)


@register_method("dds", DDSOptions, "DDS: Tweedie + CG data step + DDIM-with-DC update (Chung et al. ICLR 2024)",
                 needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _dds(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "dds", priors)
    eps = _grid_eps(model, betas, smaps, opts, "dds", opts.solver == "ddim")
    x, nfe = dds(eps, A, y, betas, opts.steps, g, gamma=opts.gamma, cg_iters=default_cg_iters(opts, "dds"),
                 eta=default_eta(opts, "dds"), solver=opts.solver, callback=callback)
    return x * s, nfe


@dataclass
class DDNMOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 100
    eta: float | None = None  # None: 0.85 (the repo's), or the eta a distilled checkpoint was trained with
    cg_iters: int | None = None  # None: 10, or the count a distilled chain checkpoint was tuned for
    solver: str = "ddim"  # "ddim": the DDNM reference update (posterior/ddim_dc.py); else a generic solver
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)
    timestep_shifts: str = "on"  # the checkpoint's tuned shifts, when stored for this grid ("off": never)


@register_method("ddnm", DDNMOptions, "DDNM range-null-space projection + DDIM (Wang et al. ICLR 2023)",
                 needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _ddnm(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "ddnm", priors)
    eps = _grid_eps(model, betas, smaps, opts, "ddnm", opts.solver == "ddim")
    x, nfe = ddnm(eps, A, y, betas, opts.steps, g, eta=default_eta(opts, "ddnm"), cg_iters=default_cg_iters(opts, "ddnm"),
                  solver=opts.solver, callback=callback)
    return x * s, nfe


@dataclass
class DiffPIROptions:
    checkpoint: str = VP_PRIOR
    steps: int = 100
    sigma_n: float = 0.0
    lam: float = 1.0
    zeta: float = 0.3
    cg_iters: int = 10
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)
    timestep_shifts: str = "on"  # the checkpoint's tuned shifts, when stored for this grid ("off": never)


@register_method("diffpir", DiffPIROptions, "DiffPIR proximal data step (Zhu et al. 2023)",
                 needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _diffpir(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "diffpir", priors)
    eps = _grid_eps(model, betas, smaps, opts, "diffpir")
    x, nfe = diffpir(eps, A, y, betas, opts.steps, g, sigma_n=opts.sigma_n, lam=opts.lam,
                     zeta=opts.zeta, cg_iters=opts.cg_iters, callback=callback)
    return x * s, nfe


@dataclass
class DPSOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 1000
    zeta: float = 1.0
    eta: float = 1.0
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)


@register_method("dps", DPSOptions, "DPS: gradient through the network (Chung et al. ICLR 2023)",
                 needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _dps(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "dps", priors)
    eps = network_eps(model, grad=True, support=support_mask(smaps, opts))
    x, nfe = dps(eps, A, y, betas, opts.steps, g, zeta=opts.zeta, eta=opts.eta, callback=callback)
    return x * s, nfe


@dataclass
class CCDFOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 100
    t0: float = 0.2
    init: str = "cg-sense"  # the estimate diffused to t0: "cg-sense" (init_cg_iters) or "l1-wavelet"
    init_cg_iters: int = 10
    solver: str = "ddim"  # "ddim": the DDNM/DDS update (posterior/ddim_dc.py); else a generic solver
    eta: float | None = None  # None: 0.85 (DDNM/DDS's; above eta = 0 on validation slices 1500-1503,
    #                          ccdf.py), or the eta a distilled checkpoint was trained with
    dc: str = "project"
    gamma: float | None = None  # dc="dds": None = hard CG data step, > 0 = soft
    cg_iters: int | None = None  # None: 10, or the count a distilled chain checkpoint was tuned for
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)
    timestep_shifts: str = "on"  # the checkpoint's tuned shifts, when stored for this grid ("off": never)


@register_method("ccdf", CCDFOptions, "CCDF: diffuse a CG-SENSE estimate to t0, run the last t0 N steps",
                 needs_smaps=True, kind="diffusion", prior=VP_PRIOR)
def _ccdf(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "ccdf", priors)
    eps = _grid_eps(model, betas, smaps, opts, "ccdf", opts.solver == "ddim")
    x_init = _ccdf_init(y, mask, smaps, opts)
    x, nfe = ccdf(eps, A, y, betas, opts.steps, g, t0=opts.t0, x_init=x_init, init_cg_iters=opts.init_cg_iters,
                  solver=opts.solver, eta=default_eta(opts, "ccdf"), dc=opts.dc, gamma=opts.gamma, cg_iters=default_cg_iters(opts, "ccdf"),
                  callback=callback)
    return x * s, nfe


CCDF_INITS = ("cg-sense", "l1-wavelet")


def _ccdf_init(y, mask, smaps, opts):
    """CCDF's x_init: None (``ccdf`` runs ``init_cg_iters`` CG-SENSE steps) or the L1-wavelet
    reconstruction (`medrecon.l1_wavelet`, the ``l1-wavelet`` method's defaults) of the normalised
    k-space ``y`` -- the paper's point that a better initial estimate needs fewer steps."""
    if opts.init not in CCDF_INITS:
        raise ValueError(f"ccdf option init: expected one of {CCDF_INITS}, got {opts.init!r}")
    if opts.init == "cg-sense":
        return None
    from medrecon.methods.classical import L1WaveletOptions, l1_wavelet

    return l1_wavelet(y, mask, smaps, L1WaveletOptions(), None)[0]


@dataclass
class ScoreMRIOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 1000
    snr: float = 0.16
    n_corrector: int = 1
    variant: str = "ssos"
    dc_noise: bool = True  # DC onto the measurement diffused like x (False: onto sqrt(abar) y)
    m_steps: int = 50  # hybrid: a SENSE Kaczmarz step every m_steps steps
    lam_start: float = 1.0  # hybrid: its lambda, linear from lam_start ...
    lam_end: float = 0.2  # ... to lam_end
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (priors.support_mask)
    quantize: str = "off"  # "int8": the U-Net's convs/linears int8, calibrated per timestep range (accel/quantize.py)
    precision: str = "fp32"  # "bf16" | "fp16": the network under autocast (accel/precision.py)


SCORE_MRI_VARIANTS = ("ssos", "sense", "hybrid")


@register_method("score-mri", ScoreMRIOptions, "Score-MRI predictor-corrector with hard data consistency "
                 "(Chung & Ye 2022); variant ssos (per coil, RSS), sense, or hybrid (per coil + SENSE "
                 "Kaczmarz steps)", kind="diffusion", prior=VP_PRIOR)
def _score_mri(kspace, mask, smaps, opts, generator, callback=None, priors=None):
    if opts.variant not in SCORE_MRI_VARIANTS:
        raise ValueError(f"score-mri option variant: expected one of {SCORE_MRI_VARIANTS}, got {opts.variant!r}")
    kw = dict(snr=opts.snr, n_corrector=opts.n_corrector, dc_noise=opts.dc_noise, callback=callback)
    if opts.variant in ("sense", "hybrid"):
        if smaps is None:  # registered without needs_smaps: the ssos variant uses no maps
            smaps = estimate_smaps(kspace, mask, f"score-mri (variant {opts.variant!r})")
        model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "score-mri", priors,
                                          need_complex=False)
        if opts.variant == "sense":
            sup = support_mask(smaps, opts) if model.in_channels == 2 else None
            x, nfe = score_mri(network_eps(model, support=sup), A, y, betas, opts.steps, g,
                               real_imag=model.in_channels == 1, **kw)
        else:
            x, nfe = score_mri_hybrid(network_eps(model), mask, smaps, y, betas, opts.steps, g,
                                      m_steps=opts.m_steps, lam_start=opts.lam_start, lam_end=opts.lam_end,
                                      real_imag=model.in_channels == 1, **kw)
        return x * s, nfe
    model, betas = load_prior(opts.checkpoint, kspace.device, "score-mri", cache=priors)
    check_distilled(opts, "score-mri", len(betas))
    model = accelerated(model, "score-mri", opts, kspace.device, priors)
    s = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        s = zero_filled_scale(rss(ifft2c(kspace)))
    g = generator if generator is not None else seeded_generator(None, kspace.device)
    x, nfe = score_mri_ssos(network_eps(model), mask, kspace / s[..., None, None, None], betas, opts.steps, g,
                            real_imag=model.in_channels == 1, **kw)
    return x * s[..., None, None], nfe
