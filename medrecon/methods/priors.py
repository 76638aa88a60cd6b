"""Checkpoints of the diffusion methods: resolution, loading, one cache, network adapters.

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

from medrecon.builtin_priors import BUILTIN_PRIORS, resolve_checkpoint

__all__ = ["VP_PRIOR", "HFS_PRIOR", "PriorCache", "DEFAULT_PRIORS", "checkpoint_dir", "checkpoint_key",
           "load_prior", "load_score_prior", "load_spirit_prior", "load_timestep_shifts", "is_vp_checkpoint",
           "preload", "network_eps", "network_score", "support_mask", "zero_filled_scale"]

VP_PRIOR = "brain128-vp"  # the default checkpoint of the VP samplers
HFS_PRIOR = "brain128-hfs"  # the default checkpoint of hfs-sde


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
