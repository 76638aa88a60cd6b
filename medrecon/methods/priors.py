"""Checkpoints of the diffusion methods: resolution, loading, one cache, network adapters.

No sampler algorithm lives here (the samplers in `medrecon.posterior` cite their reference code); the
VP eps -> VE score conversion follows k-diffusion's ``DiscreteEpsDDPMDenoiser``
(crowsonkb/k-diffusion ``k_diffusion/external.py``).

Every diffusion method takes a ``checkpoint`` option: the name of a prior shipped with medrecon
(`medrecon.builtin_priors`; ``""`` is the method's default, its registered ``prior``) or the
directory of a checkpoint written by ``medrecon train`` / `medrecon.models.checkpoint.save_checkpoint`
(EMA weights used when present).

Loaded models live in a `PriorCache`.  A `medrecon.Reconstructor` owns one, so its prior stays
loaded however many other calls (or Reconstructors) load theirs; plain `medrecon.reconstruct`
calls share `DEFAULT_PRIORS`, which keeps one model of each kind in memory (loading another
checkpoint drops the previous one).  Keys hold the checkpoint's path, its config.json mtime and
the device, so a checkpoint rewritten on disk is loaded again.

The adapters turn a loaded `medrecon.models.wrapper.DiffusionModel` into what the samplers of
`medrecon.posterior` call: `network_eps` (VP eps on complex images [..., H, W]) and `network_score`
(VE score), both any-size (reflect-padded to the U-Net's multiple) and optionally told the image is
0 outside the coil maps' support (`support_mask`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from medrecon.builtin_priors import BUILTIN_PRIORS, PRIORS, resolve_checkpoint

__all__ = ["VP_PRIOR", "HFS_PRIOR", "DDGAN_PRIOR", "CT_LATENT_PRIOR", "CT_PIXEL_PRIOR", "PriorCache", "DEFAULT_PRIORS", "checkpoint_dir", "checkpoint_key",
           "load_prior", "load_score_prior", "load_spirit_prior", "load_timestep_shifts", "is_vp_checkpoint",
           "preload", "network_eps", "network_score", "support_mask", "zero_filled_scale", "accelerated",
           "CALIBRATION"]

VP_PRIOR = "brain128-vp"  # the default checkpoint of the VP samplers
HFS_PRIOR = "brain128-hfs"  # the default checkpoint of hfs-sde
DDGAN_PRIOR = "brain128-ddgan"  # the default checkpoint of fdmr (a DDGAN generator)
CT_LATENT_PRIOR = "ct128-latent-cold"  # the default checkpoint of latent-cold-diffusion
CT_PIXEL_PRIOR = "ct128-pixel-ddpm"  # the default checkpoint of pixel-ddpm


class PriorCache:
    """Loaded priors by key ``(kind, ...)`` (`checkpoint_key`); at most ``per_kind`` entries of
    each kind are kept (None: no limit), the oldest dropped first."""

    def __init__(self, per_kind: int | None = None) -> None:
        if per_kind is not None and (not isinstance(per_kind, int) or per_kind < 1):
            raise ValueError(f"per_kind: expected an int >= 1 or None (no limit), got {per_kind!r}")
        self.per_kind = per_kind
        self._items: dict[tuple, Any] = {}

    def get(self, key: tuple, load: Callable[[], Any]) -> Any:
        """The value held under ``key``, else ``load()`` (then held under it)."""
        if key in self._items:
            return self._items[key]
        value = load()
        if self.per_kind is not None:
            same = [k for k in self._items if k[0] == key[0]]
            for k in same[:max(0, len(same) - self.per_kind + 1)]:
                del self._items[k]
        self._items[key] = value
        return value

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[tuple]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()


DEFAULT_PRIORS = PriorCache(per_kind=1)  # what plain reconstruct() calls load (module docstring)


def checkpoint_key(kind: str, path: Path, device, *extra) -> tuple:
    """Cache key of the checkpoint directory ``path`` loaded on ``device`` (``extra``: variants)."""
    return (kind, str(Path(path).resolve()), os.path.getmtime(Path(path) / "config.json"), str(device), *extra)


def checkpoint_dir(checkpoint: str, method: str, default: str | None) -> Path:
    """The checkpoint option as a directory: a builtin prior name (``""``: ``default``) or a path."""
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


def _model(path: Path, device, cache: PriorCache | None):
    """The `DiffusionModel` of the checkpoint directory ``path`` on ``device``, frozen, cached."""
    def load():
        from medrecon.models import checkpoint

        return checkpoint.load_model(path, map_location=device).requires_grad_(False)
    return (DEFAULT_PRIORS if cache is None else cache).get(checkpoint_key("model", path, device), load)


def load_prior(checkpoint: str, device: torch.device, method: str, default: str | None = VP_PRIOR,
               cache: PriorCache | None = None):
    """(model, betas) from a VP checkpoint (builtin prior name or directory; ``""``: ``default``),
    held by ``cache`` (None: `DEFAULT_PRIORS`)."""
    path = checkpoint_dir(checkpoint, method, default)
    model = _model(path, device, cache)
    betas = getattr(model.schedule, "betas", None)
    if betas is None:
        raise ValueError(f"method {method!r}: checkpoint {str(path)!r} has a VE schedule; the posterior "
                         f"samplers need a VP (discrete betas) prior")
    return model, betas


def load_score_prior(checkpoint: str, device: torch.device, method: str, default: str | None = None,
                     cache: PriorCache | None = None):
    """(model, extra) from a VE ``"score"`` checkpoint (builtin name or directory; ``""``:
    ``default``, None: required), held like ``load_prior``; ``extra`` is its config's ``extra``."""
    from medrecon.models.checkpoint import read_config_json
    from medrecon.models.wrapper import is_ve

    path = checkpoint_dir(checkpoint, method, default)
    model = _model(path, device, cache)
    if model.prediction_type != "score" or not is_ve(model.schedule):
        raise ValueError(f"method {method!r}: checkpoint {str(path)!r} is a {model.prediction_type!r} prior "
                         f"on a {'VE' if is_ve(model.schedule) else 'VP'} schedule; a VE 'score' prior "
                         f"(conditioned on sigma) is required")
    if model.in_channels != 2:
        raise ValueError(f"method {method!r}: checkpoint {str(path)!r} has {model.in_channels} input "
                         f"channel(s); a complex-image (2-channel) prior is required")
    return model, read_config_json(path).get("extra", {}) or {}


def load_spirit_prior(checkpoint: str, device: torch.device, method: str = "spirit-diffusion",
                      cache: PriorCache | None = None):
    """SPIRiT-Diffusion's prior: ``(model, betas)`` of a VP image prior (``load_prior``) or ``(model,
    extra)`` of a per-coil VE score prior (``load_score_prior``), by the checkpoint's schedule."""
    path = checkpoint_dir(checkpoint, method, VP_PRIOR)
    if is_vp_checkpoint(path):
        return load_prior(str(path), device, method, cache=cache)
    return load_score_prior(str(path), device, method, cache=cache)


def is_vp_checkpoint(path: Path) -> bool:
    """Whether the checkpoint directory holds a VP (discrete betas) model, from its config.json alone."""
    from medrecon.models.checkpoint import read_config_json

    cfg = read_config_json(path)
    schedule = cfg.get("schedule") if isinstance(cfg, dict) else None
    return isinstance(schedule, dict) and schedule.get("type") == "vp"


def load_timestep_shifts(checkpoint: str, method: str, default: str | None = VP_PRIOR):
    """The `medrecon.accel.TimestepShifts` stored with the checkpoint (``save_checkpoint(...,
    timestep_shifts=shifts.to_dict())``, fitted by `medrecon.accel.fit_timestep_shifts`), else None."""
    from medrecon.accel.timestep_tuner import TimestepShifts
    from medrecon.models.checkpoint import read_config_json

    cfg = read_config_json(checkpoint_dir(checkpoint, method, default))
    stored = cfg.get("timestep_shifts") if isinstance(cfg, dict) else None
    return None if stored is None else TimestepShifts.from_dict(stored)


def preload(spec, opts, device, cache: PriorCache) -> None:
    """Load into ``cache`` the checkpoint of a diffusion method that has a default prior
    (``spec.prior``: its ``checkpoint`` option names a medrecon model checkpoint); other methods
    load theirs on their first run (into the cache they are given)."""
    if spec.kind != "diffusion" or spec.prior is None or not hasattr(opts, "checkpoint"):
        return
    if spec.prior in BUILTIN_PRIORS and PRIORS[spec.prior].kind == "ddgan":
        return  # a DDGAN generator, not a model checkpoint: fdmr loads it on its first run
    _model(checkpoint_dir(opts.checkpoint, spec.name, spec.prior), device, cache)


def network_eps(model, grad: bool = False, support: torch.Tensor | None = None, cache: int = 1):
    """eps_fn on images [..., H, W] (complex, or real for a 1-channel prior) for the [B, H, W] wrapper.

    ``cache`` > 1 runs the network through DeepCache (`medrecon.accel.DeepCacheUNet`, Ma et al.
    CVPR 2024): every ``cache``-th call is a full U-Net pass, the calls between reuse its deep
    features.  A fresh cache is made per call of this function, i.e. per reconstruction.

    ``support`` (bool, broadcastable to x): where False the image is known to be 0 (outside the coil
    maps' support, see `support_mask`), and eps is the exact eps of a zero pixel, x_t / sigma_t (so
    Tweedie's x0 estimate is 0 there); the network's eps elsewhere."""
    if int(cache) < 1:
        raise ValueError(f"option cache: expected a DeepCache interval >= 1 (1 = off), got {cache}")
    if int(cache) > 1:
        from medrecon.accel.deepcache import DeepCacheUNet
        from medrecon.models.wrapper import DiffusionModel

        net = model.net  # an int8 / autocast wrapper (`accelerated`) keeps its place around DeepCache
        fast = DeepCacheUNet(getattr(net, "unet", net), interval=int(cache))
        model = DiffusionModel(net.wrap(fast) if hasattr(net, "wrap") else fast, model.schedule,
                               model.prediction_type)
    real = model.in_channels == 1
    from medrecon.models.padding import padded
    net_eps = padded(model.eps, model)  # any H, W: reflect-padded to the U-Net's multiple, cropped back

    def f(x, t):
        xb = x.reshape(-1, *x.shape[-2:])
        xb = xb.unsqueeze(1) if real else xb
        window = isinstance(t, torch.Tensor) and t.ndim == 1  # t[k] for x[k] (ParaDiGMS, solvers/paradigms.py)
        if window and int(cache) > 1:
            raise ValueError("option cache: DeepCache reuses the previous step's features; it does not combine "
                             "with solver 'paradigms' (set cache=1)")
        tb = t.repeat_interleave(xb.shape[0] // len(t)) if window else t
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            e = (net_eps(xb, tb).squeeze(1) if real else net_eps(xb, tb)).reshape(x.shape)
            if support is not None:
                sigma = torch.as_tensor(model.schedule.sigma(torch.as_tensor(t, device=x.device).detach()))
                sigma = sigma.to(x.real.dtype).reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))
                e = torch.where(support, e, x / sigma)
        return e
    return f


def network_score(model, support: torch.Tensor | None = None):
    """score_fn(x [..., H, W] complex, sigma) of a VE score model (no autograd).  ``support`` as in
    `network_eps`: outside it the score of a zero pixel at noise level sigma, -x / sigma^2 (Tweedie's
    x0 estimate x + sigma^2 score is 0 there)."""
    from medrecon.models.hfs_process import hfs_score_fn

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


def support_mask(smaps, opts):
    """Pixels the SENSE model can see, sum_c |S_c|^2 > 0 ([..., H, W] bool), when ``opts.support``
    and some pixel lies outside (ESPIRiT maps are 0 where no coil sees signal); else None.

    A = M F S ignores x where S = 0: the data cannot pin the image there and a prior trained on
    finite data (or a sampler's null-space drift) may leave anything in it; the SENSE model says
    the object is 0 there (CG-SENSE, started at 0, keeps it 0), which `network_eps` tells the sampler."""
    if not getattr(opts, "support", False):
        return None
    sup = smaps.abs().pow(2).sum(-3) > 0
    return None if bool(sup.all()) else sup


def zero_filled_scale(image: torch.Tensor) -> torch.Tensor:
    """Per-slice max |image| of a zero-filled image [..., H, W] (>= the smallest float): with
    ``normalize=True`` the methods divide k-space by it, the scale the priors are trained at."""
    return image.abs().flatten(-2).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)


# the small simulated set the int8 calibration runs the method on (`accelerated`): training seeds
# (the held-out benches use >= 1000), the priors' training size, a 4x equispaced mask, 20 steps
CALIBRATION = {"seeds": (0, 1), "size": 128, "coils": 8, "mask": ("equispaced_fraction", 4, 0.08), "steps": 20,
               "calls": 64}


def _calibration_set(device):
    """(kspace [C, 2 size, size], mask, true coil maps) of each `CALIBRATION` seed."""
    from medrecon.datasets.simulate_mri import simulate_mri_volume
    from medrecon.physics.masks import make_mask

    c = CALIBRATION
    kind, acc, cf = c["mask"]
    out = []
    for seed in c["seeds"]:
        v = simulate_mri_volume(1, c["coils"], (c["size"], c["size"]), 30.0, seed=seed)
        k = torch.from_numpy(v["kspace"][0]).to(device)
        out.append((k, make_mask(kind, tuple(k.shape[-2:]), acc, cf, seed=seed).to(device),
                    torch.from_numpy(v["maps"]).to(device=device, dtype=k.dtype)))
    return out


def accelerated(model, method: str, opts, device, cache: PriorCache | None, default: str | None = VP_PRIOR):
    """The model ``method`` samples with, by its options ``quantize`` and ``precision``.

    ``quantize="int8"``: the U-Net's convs and linears int8 (`medrecon.accel.quantize`), calibrated
    per timestep range on the network inputs of this very method (its own sampler, data step and
    options, ``CALIBRATION["steps"]`` steps, float32) run on a small simulated set
    (`CALIBRATION`), not on the input: the calibration is then the same for every input
    (reproducible results, made once per checkpoint, method and options and held in ``cache``
    like the prior), and the first slice pays no float pre-run at its own size.
    ``precision="bf16"|"fp16"``: the network under autocast (`medrecon.accel.precision`)."""
    import dataclasses

    from medrecon.accel.precision import AutocastNet, check_precision
    from medrecon.accel.quantize import check_quantize
    from medrecon.models.wrapper import DiffusionModel

    quant, prec = getattr(opts, "quantize", "off"), getattr(opts, "precision", "fp32")
    check_quantize(quant, device, method)
    dtype = check_precision(prec, device, method)
    if quant == "int8":
        float_opts = dataclasses.replace(opts, quantize="off", precision="fp32", **{
            k: v for k, v in (("steps", CALIBRATION["steps"]), ("cache", 1)) if hasattr(opts, k)})
        key = checkpoint_key("int8", checkpoint_dir(opts.checkpoint, method, default), device, method,
                             repr(float_opts))
        net = (DEFAULT_PRIORS if cache is None else cache).get(
            key, lambda: _calibrate(model, method, float_opts, device, cache))
        model = DiffusionModel(net, model.schedule, model.prediction_type)
    if dtype is not None:
        model = DiffusionModel(AutocastNet(model.net, dtype), model.schedule, model.prediction_type)
    return model


def _calibrate(model, method: str, float_opts, device, cache):
    """`medrecon.accel.quantize.QuantizedNet` of ``model.net`` calibrated on ``method``'s own
    trajectories over `_calibration_set` (Q-Diffusion's calibration, see that module)."""
    from medrecon.accel.quantize import calibration_samples, quantize_unet
    from medrecon.registry import get_method, seeded_generator

    spec = get_method(method)

    def run():
        for k, m, maps in _calibration_set(device):
            spec.fn(k, m, maps, float_opts, seeded_generator(0, device), priors=cache)
    return quantize_unet(model.net, calibration_samples(run, model.net, CALIBRATION["calls"]))
