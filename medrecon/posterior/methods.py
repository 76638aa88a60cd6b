"""The posterior samplers as ``medrecon.reconstruct`` methods (importing this module registers them).

Names: ``dds``, ``ddnm``, ``diffpir``, ``dps``, ``ccdf``, ``score-mri`` (VP priors), ``hfs-sde`` and
``spirit-diffusion`` (VE score priors).  Every method takes a ``checkpoint`` option: the name of a
prior shipped with medrecon (``medrecon.builtin_priors``) or the directory of a checkpoint written
by ``medrecon train`` / ``medrecon.models.checkpoint.save_checkpoint`` (EMA weights used when
present).  Defaults: ``brain128-vp`` for the VP samplers, ``brain128-hfs`` for ``hfs-sde``
(trained on the simulated brain, 128-wide images: docs/priors.md); ``spirit-diffusion`` also defaults
to ``brain128-vp``, a prior of coil-combined images that it lifts to coil space (or takes a per-coil
VE score prior).
A complex (2-channel) network is required, except for ``score-mri``, which runs a real (1-channel)
prior in its real/imaginary variant.

Conventions: the operator is SENSE ``A = M F S`` with the given or ESPIRiT maps (``score-mri``:
``variant="ssos"`` per-coil with RSS combination, no maps; ``"sense"`` and ``"hybrid"`` need
``smaps=``).  With ``normalize=True`` each slice's k-space is divided by max |A^H y| (the
zero-filled image's maximum, the scale the priors are trained at) and the image multiplied back,
so ``sigma_n`` (diffpir) is in those units.  ``seed=None`` in ``reconstruct`` means seed 0 here:
results are always reproducible.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.mri import MultiCoilMRI
from medrecon.registry import register_method

from .ccdf import ccdf
from .ddnm import ddnm, diffpir
from .dds import dds
from .dps import dps
from .score_mri import score_mri, score_mri_hybrid, score_mri_ssos

__all__ = ["DDSOptions", "DDNMOptions", "DiffPIROptions", "DPSOptions", "CCDFOptions", "ScoreMRIOptions",
           "load_prior"]

_CACHE: dict = {}
VP_PRIOR = "brain128-vp"  # the default checkpoint of the VP samplers
HFS_PRIOR = "brain128-hfs"  # the default checkpoint of hfs-sde


def _checkpoint_dir(checkpoint: str, method: str, default: str | None) -> Path:
    """The checkpoint option as a directory: a builtin prior name (``""``: ``default``) or a path."""
    from medrecon.builtin_priors import BUILTIN_PRIORS, resolve_checkpoint

    if not checkpoint and default is None:
        raise ValueError(f"method {method!r} needs the option checkpoint=<directory of a medrecon checkpoint "
                         f"(config.json + model.safetensors)>: none of the builtin priors "
                         f"({', '.join(BUILTIN_PRIORS)}) fits it; train one with `medrecon train`")
    path = resolve_checkpoint(checkpoint, default or "")
    if not (path / "config.json").is_file():
        raise ValueError(f"method {method!r}: checkpoint {str(checkpoint)!r} is not a medrecon checkpoint directory "
                         f"(expected {str(path / 'config.json')!r} and model.safetensors) nor a builtin prior "
                         f"({', '.join(BUILTIN_PRIORS)})")
    return path


def load_prior(checkpoint: str, device: torch.device, method: str, default: str | None = VP_PRIOR):
    """(model, betas) from a VP checkpoint (builtin prior name or directory; ``""``: ``default``),
    cached per (path, mtime, device)."""
    path = _checkpoint_dir(checkpoint, method, default)
    key = (str(path.resolve()), os.path.getmtime(path / "config.json"), str(device))
    if key not in _CACHE:
        from medrecon.models.checkpoint import load_model

        model = load_model(path, map_location=device).requires_grad_(False)
        betas = getattr(model.schedule, "betas", None)
        if betas is None:
            raise ValueError(f"method {method!r}: checkpoint {str(path)!r} has a VE schedule; the posterior "
                             f"samplers need a VP (discrete betas) prior")
        _CACHE.clear()  # keep one model in memory
        _CACHE[key] = (model, betas)
    return _CACHE[key]


def _eps(model, grad: bool = False, support: torch.Tensor | None = None, cache: int = 1):
    """eps_fn on images [..., H, W] (complex, or real for a 1-channel prior) for the [B, H, W] wrapper.

    ``cache`` > 1 runs the network through DeepCache (`medrecon.accel.DeepCacheUNet`, Ma et al.
    CVPR 2024): every ``cache``-th call is a full U-Net pass, the calls between reuse its deep
    features.  A fresh cache is made per call of this function, i.e. per reconstruction.

    ``support`` (bool, broadcastable to x): where False the image is known to be 0 (outside the coil
    maps' support, see `_support`), and eps is the exact eps of a zero pixel, x_t / sigma_t (so
    Tweedie's x0 estimate is 0 there); the network's eps elsewhere."""
    if int(cache) < 1:
        raise ValueError(f"option cache: expected a DeepCache interval >= 1 (1 = off), got {cache}")
    if int(cache) > 1:
        from medrecon.accel.deepcache import DeepCacheUNet
        from medrecon.models.wrapper import DiffusionModel

        model = DiffusionModel(DeepCacheUNet(model.net, interval=int(cache)), model.schedule,
                               model.prediction_type)
    real = model.in_channels == 1
    from medrecon.models.padding import padded
    net_eps = padded(model.eps, model)  # any H, W: reflect-padded to the U-Net's multiple, cropped back

    def f(x, t):
        xb = x.reshape(-1, *x.shape[-2:])
        xb = xb.unsqueeze(1) if real else xb
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            e = (net_eps(xb, t).squeeze(1) if real else net_eps(xb, t)).reshape(x.shape)
            if support is not None:
                sigma = torch.as_tensor(model.schedule.sigma(torch.as_tensor(t, device=x.device).detach()))
                e = torch.where(support, e, x / sigma.to(x.real.dtype).reshape(-1, 1, 1).squeeze(0))
        return e
    return f


def _support(smaps, opts):
    """Pixels the SENSE model can see, sum_c |S_c|^2 > 0 ([..., H, W] bool), when ``opts.support``
    and some pixel lies outside (ESPIRiT maps are 0 where no coil sees signal); else None.

    A = M F S ignores x where S = 0: the data cannot pin the image there and a prior trained on
    finite data (or a sampler's null-space drift) may leave anything in it; the SENSE model says
    the object is 0 there (CG-SENSE, started at 0, keeps it 0), which `_eps` tells the sampler."""
    if not getattr(opts, "support", False):
        return None
    sup = smaps.abs().pow(2).sum(-3) > 0
    return None if bool(sup.all()) else sup


def _setup(kspace, mask, smaps, opts, generator, method, need_complex=True):
    if smaps is None:
        raise ValueError(f"method {method!r} needs coil sensitivities (smaps)")
    model, betas = load_prior(opts.checkpoint, kspace.device, method)
    if need_complex and model.in_channels != 2:
        raise ValueError(f"method {method!r}: checkpoint {opts.checkpoint!r} has {model.in_channels} input "
                         f"channel(s); a complex-image (2-channel) prior is required")
    A = MultiCoilMRI(smaps, mask)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        scale = A.adjoint(kspace).abs().flatten(-2).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    y = kspace / scale[..., None, None, None]
    gen = generator if generator is not None else torch.Generator(device=kspace.device).manual_seed(0)
    return model, betas, A, y, scale[..., None, None], gen


@dataclass
class DDSOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 50
    gamma: float | None = None  # None: hard data step (DDS noiseless branch); > 0: (I + gamma A^H A) x = ...
    cg_iters: int = 5
    eta: float = 0.85
    solver: str = "ddim"  # "ddim": the DDS/DDNM reference update (posterior/ddim_dc.py); else a generic solver
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)


@register_method("dds", DDSOptions, "DDS: Tweedie + CG data step + DDIM-with-DC update (Chung et al. ICLR 2024)",
                 needs_smaps=True, kind="diffusion")
def _dds(kspace, mask, smaps, opts, generator):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "dds")
    eps = _eps(model, support=_support(smaps, opts), cache=opts.cache)
    x, nfe = dds(eps, A, y, betas, opts.steps, g, gamma=opts.gamma, cg_iters=opts.cg_iters,
                 eta=opts.eta, solver=opts.solver)
    return x * s, nfe


@dataclass
class DDNMOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 100
    eta: float = 0.85
    cg_iters: int = 10
    solver: str = "ddim"  # "ddim": the DDNM reference update (posterior/ddim_dc.py); else a generic solver
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)


@register_method("ddnm", DDNMOptions, "DDNM range-null-space projection + DDIM (Wang et al. ICLR 2023)",
                 needs_smaps=True, kind="diffusion")
def _ddnm(kspace, mask, smaps, opts, generator):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "ddnm")
    eps = _eps(model, support=_support(smaps, opts), cache=opts.cache)
    x, nfe = ddnm(eps, A, y, betas, opts.steps, g, eta=opts.eta, cg_iters=opts.cg_iters, solver=opts.solver)
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
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)


@register_method("diffpir", DiffPIROptions, "DiffPIR proximal data step (Zhu et al. 2023)",
                 needs_smaps=True, kind="diffusion")
def _diffpir(kspace, mask, smaps, opts, generator):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "diffpir")
    eps = _eps(model, support=_support(smaps, opts), cache=opts.cache)
    x, nfe = diffpir(eps, A, y, betas, opts.steps, g, sigma_n=opts.sigma_n, lam=opts.lam,
                     zeta=opts.zeta, cg_iters=opts.cg_iters)
    return x * s, nfe


@dataclass
class DPSOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 1000
    zeta: float = 1.0
    eta: float = 1.0
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)


@register_method("dps", DPSOptions, "DPS: gradient through the network (Chung et al. ICLR 2023)",
                 needs_smaps=True, kind="diffusion")
def _dps(kspace, mask, smaps, opts, generator):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "dps")
    eps = _eps(model, grad=True, support=_support(smaps, opts))
    x, nfe = dps(eps, A, y, betas, opts.steps, g, zeta=opts.zeta, eta=opts.eta)
    return x * s, nfe


@dataclass
class CCDFOptions:
    checkpoint: str = VP_PRIOR
    steps: int = 100
    t0: float = 0.2
    init_cg_iters: int = 10
    solver: str = "ddim"  # "ddim": the DDNM/DDS update (posterior/ddim_dc.py); else a generic solver
    eta: float = 0.85  # the DDNM/DDS default; above eta = 0 on validation slices 1500-1503 (ccdf.py)
    dc: str = "project"
    gamma: float | None = None  # dc="dds": None = hard CG data step, > 0 = soft
    cg_iters: int = 10
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)
    cache: int = 1  # DeepCache interval: every cache-th network call is a full pass (1 = off)


@register_method("ccdf", CCDFOptions, "CCDF: diffuse a CG-SENSE estimate to t0, run the last t0 N steps",
                 needs_smaps=True, kind="diffusion")
def _ccdf(kspace, mask, smaps, opts, generator):
    model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "ccdf")
    eps = _eps(model, support=_support(smaps, opts), cache=opts.cache)
    x, nfe = ccdf(eps, A, y, betas, opts.steps, g, t0=opts.t0, init_cg_iters=opts.init_cg_iters,
                  solver=opts.solver, eta=opts.eta, dc=opts.dc, gamma=opts.gamma, cg_iters=opts.cg_iters)
    return x * s, nfe


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
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)


SCORE_MRI_VARIANTS = ("ssos", "sense", "hybrid")


@register_method("score-mri", ScoreMRIOptions, "Score-MRI predictor-corrector with hard data consistency "
                 "(Chung & Ye 2022); variant ssos (per coil, RSS), sense, or hybrid (per coil + SENSE "
                 "Kaczmarz steps)", kind="diffusion")
def _score_mri(kspace, mask, smaps, opts, generator):
    if opts.variant not in SCORE_MRI_VARIANTS:
        raise ValueError(f"score-mri option variant: expected one of {SCORE_MRI_VARIANTS}, got {opts.variant!r}")
    kw = dict(snr=opts.snr, n_corrector=opts.n_corrector, dc_noise=opts.dc_noise)
    if opts.variant in ("sense", "hybrid"):
        if smaps is None:  # registered without needs_smaps: the ssos variant uses no maps
            from medrecon.reconstruct import estimate_smaps

            smaps = estimate_smaps(kspace, mask, f"score-mri (variant {opts.variant!r})")
        model, betas, A, y, s, g = _setup(kspace, mask, smaps, opts, generator, "score-mri", need_complex=False)
        if opts.variant == "sense":
            sup = _support(smaps, opts) if model.in_channels == 2 else None
            x, nfe = score_mri(_eps(model, support=sup), A, y, betas, opts.steps, g,
                               real_imag=model.in_channels == 1, **kw)
        else:
            x, nfe = score_mri_hybrid(_eps(model), mask, smaps, y, betas, opts.steps, g, m_steps=opts.m_steps,
                                      lam_start=opts.lam_start, lam_end=opts.lam_end,
                                      real_imag=model.in_channels == 1, **kw)
        return x * s, nfe
    model, betas = load_prior(opts.checkpoint, kspace.device, "score-mri")
    s = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        s = rss(ifft2c(kspace)).flatten(-2).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    g = generator if generator is not None else torch.Generator(device=kspace.device).manual_seed(0)
    x, nfe = score_mri_ssos(_eps(model), mask, kspace / s[..., None, None, None], betas, opts.steps, g,
                            real_imag=model.in_channels == 1, **kw)
    return x * s[..., None, None], nfe


# ---------------------------------------------------------------- HFS-SDE and SPIRiT-Diffusion
# Both need a VE-type "score" checkpoint (the network conditioned on the noise level sigma), not
# the VP priors above: an HFS prior trained with ``medrecon.models.hfs_loss.hfs_loss`` (its
# ``HFSSDE`` stored in the checkpoint config as ``extra["hfs"] = sde.to_dict()``); SPIRiT-Diffusion
# takes a per-coil complex VE score prior or a VP prior of coil-combined images (converted and lifted).

from .hfs_sde import hfs_sde  # noqa: E402
from .spirit_diffusion import spirit_diffusion  # noqa: E402

__all__ += ["HFSSDEOptions", "SpiritDiffusionOptions", "load_score_prior", "load_spirit_prior"]


def load_score_prior(checkpoint: str, device: torch.device, method: str, default: str | None = None):
    """(model, extra) from a VE ``"score"`` checkpoint (builtin name or directory; ``""``:
    ``default``, None: required), cached like ``load_prior``."""
    import json

    path = _checkpoint_dir(checkpoint, method, default)
    key = ("score", str(path.resolve()), os.path.getmtime(path / "config.json"), str(device))
    if key not in _CACHE:
        from medrecon.models.checkpoint import load_model
        from medrecon.models.wrapper import is_ve

        model = load_model(path, map_location=device).requires_grad_(False)
        if model.prediction_type != "score" or not is_ve(model.schedule):
            raise ValueError(f"method {method!r}: checkpoint {str(path)!r} is a {model.prediction_type!r} prior "
                             f"on a {'VE' if is_ve(model.schedule) else 'VP'} schedule; a VE 'score' prior "
                             f"(conditioned on sigma) is required")
        if model.in_channels != 2:
            raise ValueError(f"method {method!r}: checkpoint {str(path)!r} has {model.in_channels} input "
                             f"channel(s); a complex-image (2-channel) prior is required")
        with open(path / "config.json") as f:
            extra = json.load(f).get("extra", {}) or {}
        _CACHE.clear()
        _CACHE[key] = (model, extra)
    return _CACHE[key]


def _score(model, support: torch.Tensor | None = None):
    """score_fn(x [..., H, W] complex, sigma) of a VE score model (no autograd).  ``support`` as in
    `_eps`: outside it the score of a zero pixel at noise level sigma, -x / sigma^2 (Tweedie's x0
    estimate x + sigma^2 score is 0 there)."""
    from medrecon.models.hfs_loss import hfs_score_fn

    from medrecon.models.padding import padded

    f = padded(hfs_score_fn(model), model)  # any H, W: reflect-padded to the U-Net's multiple, cropped back

    def score_fn(x, sigma):
        with torch.no_grad():
            s = f(x.reshape(-1, *x.shape[-2:]), sigma).reshape(x.shape)
            if support is not None:
                sig = torch.as_tensor(sigma, device=x.device, dtype=x.real.dtype)
                s = torch.where(support, s, -x / sig.reshape(sig.shape + (1, 1) if sig.ndim else ()) ** 2)
            return s
    return score_fn


@dataclass
class HFSSDEOptions:
    checkpoint: str = HFS_PRIOR
    steps: int = 1000
    snr: float = 0.16
    mse: float = 2.5
    corrector_mse: float = 0.1
    n_corrector: int = 1
    dc: str = "hard"
    acs: int = 0  # width of the low-frequency block M_L; 0: the checkpoint's extra["hfs"] (else 16)
    tweedie: bool = True  # last step: Tweedie's E[x0 | x_t] instead of the Euler-Maruyama mean
    normalize: bool = True
    support: bool = True  # x0 = 0 where the coil maps are 0 (_support)


@register_method("hfs-sde", HFSSDEOptions, "HFS-SDE: diffusion on the high frequencies, low frequencies "
                 "from the data (Cao et al. TMI 2024)", needs_smaps=True, kind="diffusion")
def _hfs_sde(kspace, mask, smaps, opts, generator):
    from medrecon.models.hfs_loss import HFSSDE

    if smaps is None:
        raise ValueError("method 'hfs-sde' needs coil sensitivities (smaps)")
    model, extra = load_score_prior(opts.checkpoint, kspace.device, "hfs-sde", HFS_PRIOR)
    sde = HFSSDE.from_dict(extra["hfs"]) if isinstance(extra.get("hfs"), dict) else HFSSDE()
    if opts.acs:
        sde = HFSSDE(int(opts.acs), sde.beta_min, sde.beta_max, sde.region)
    A = MultiCoilMRI(smaps, mask)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:
        scale = A.adjoint(kspace).abs().flatten(-2).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    g = generator if generator is not None else torch.Generator(device=kspace.device).manual_seed(0)
    x, nfe = hfs_sde(_score(model, _support(smaps, opts)), A, kspace / scale[..., None, None, None], sde, opts.steps, g, snr=opts.snr,
                     mse=opts.mse, corrector_mse=opts.corrector_mse, n_corrector=opts.n_corrector, dc=opts.dc,
                     tweedie=opts.tweedie)
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
    sigma_min: float = 0.0  # 0: the checkpoint's (VE: its sigma_min; VP: sqrt(beta_0 / (1 - beta_0)))
    sigma_max: float = 0.0  # 0: the checkpoint's (VE: its sigma_max; VP: sqrt((1 - abar_T) / abar_T)); paper 348
    kernel_width: int = 7
    normalize: bool = True
    support: bool = True  # VP prior: rho = 0 where the coil maps are 0 (_support)


@register_method("spirit-diffusion", SpiritDiffusionOptions, "SPIRiT-Diffusion: per-coil SDE with the SPIRiT "
                 "consistency drift (Cui et al. TMI 2024); a VP image prior (default brain128-vp) lifted to "
                 "coil space, or a per-coil VE score prior", needs_smaps=True, kind="diffusion")
def _spirit_diffusion(kspace, mask, smaps, opts, generator):
    """VP checkpoints are priors of coil-combined images rho = S^H x: their eps gives the VE score of rho
    (`ve_score_from_vp`) and `coil_score_from_image_prior` lifts it to coil space (1 network call per
    score); VE "score" checkpoints are per-coil networks (C calls per score, the paper's set-up)."""
    from medrecon.physics.spirit import LAM_SPIRIT_DIFFUSION, spirit_calibrate
    from medrecon.posterior.spirit_diffusion import coil_score_from_image_prior, ve_score_from_vp
    from medrecon.reconstruct import acs_width

    if smaps is None:
        raise ValueError("method 'spirit-diffusion' needs coil sensitivities (smaps)")
    model, _ = load_spirit_prior(opts.checkpoint, kspace.device)
    vp = getattr(model.schedule, "betas", None) is not None  # a VP image prior (else per-coil VE scores)
    acs = acs_width(mask)
    if acs < opts.kernel_width:
        raise ValueError(f"method 'spirit-diffusion': the SPIRiT kernel ({opts.kernel_width}x{opts.kernel_width}) is "
                         f"calibrated from the fully sampled centre, but the mask has only {acs} central lines")
    H = kspace.shape[-2]
    calib = (min(H, 48), min(acs, 24)) if mask.shape[-2] == 1 else min(acs, 24)
    scale = torch.ones(kspace.shape[:-3], device=kspace.device)
    if opts.normalize:  # a VP image prior: its training scale, max |A^H y| as the VP methods; else max RSS
        zf = MultiCoilMRI(smaps, mask).adjoint(kspace).abs() if vp else rss(ifft2c(kspace))
        scale = zf.flatten(-2).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    y = kspace / scale[..., None, None, None]
    kernel = spirit_calibrate(y, calib_width=calib, kernel_width=opts.kernel_width, lam=LAM_SPIRIT_DIFFUSION)
    if vp:
        if model.in_channels != 2:
            raise ValueError(f"method 'spirit-diffusion': checkpoint {opts.checkpoint!r} has {model.in_channels} "
                             f"input channel(s); a complex-image (2-channel) prior is required")
        smaps = smaps.to(device=kspace.device, dtype=kspace.dtype)
        score = coil_score_from_image_prior(ve_score_from_vp(_eps(model, support=_support(smaps, opts)),
                                                             model.schedule), smaps)
        edm = model.schedule.edm_sigma(torch.tensor([0.0, model.schedule.num_train_timesteps - 1.0]))
        lo, hi, per = float(edm[0]), float(edm[1]), 1
    else:
        score, per = _score(model), None
        lo, hi = float(model.schedule.sigma_min), float(model.schedule.sigma_max)
    g = generator if generator is not None else torch.Generator(device=kspace.device).manual_seed(0)
    x, nfe = spirit_diffusion(score, mask, y, kernel, smaps, opts.steps, g,
                              sigma_min=opts.sigma_min or lo, sigma_max=opts.sigma_max or hi, eta=opts.eta,
                              snr=opts.snr, mse=opts.mse, corrector_mse=opts.corrector_mse,
                              n_corrector=opts.n_corrector, dc=opts.dc, nfe_per_score=per,
                              in_range=True)
    return x * scale[..., None, None], nfe


def load_spirit_prior(checkpoint: str, device: torch.device, method: str = "spirit-diffusion"):
    """SPIRiT-Diffusion's prior: ``(model, betas)`` of a VP image prior (``load_prior``) or ``(model,
    extra)`` of a per-coil VE score prior (``load_score_prior``), by the checkpoint's schedule."""
    path = _checkpoint_dir(checkpoint, method, VP_PRIOR)
    if _is_vp_checkpoint(path):
        return load_prior(str(path), device, method)
    return load_score_prior(str(path), device, method)


def _is_vp_checkpoint(path: Path) -> bool:
    """Whether the checkpoint directory holds a VP (discrete betas) model, from its config.json alone."""
    from medrecon.models.checkpoint import read_config_json

    cfg = read_config_json(path)
    schedule = cfg.get("schedule") if isinstance(cfg, dict) else None
    return isinstance(schedule, dict) and schedule.get("type") == "vp"
