"""``reconstruct``: one entry point for every registered method (classical or diffusion).

Input conventions (checked here, at the boundary, so methods can trust them):

- ``kspace`` is always multi-coil ``[..., C, H, W]`` complex; single-coil data is ``C = 1``
  (``kspace.unsqueeze(-3)``), and the zero-filled/RSS result is then just the magnitude.
- ``mask`` is bool (or 0/1) broadcastable to ``[..., H, W]``; a 1-D column mask is ``[1, W]``.
  k-space off the mask is ignored (multiplied by the mask) so undersampled and fully sampled
  inputs can be passed alike.
- ``smaps`` ``[..., C, H, W]`` are estimated with ESPIRiT from the fully sampled centre when a
  method needs them and none are given (`medrecon.physics.coils.estimate_smaps`).

Options are parsed once (`medrecon.registry.resolve_options`): keywords, or the dataclass the CLI
(or any caller) already resolved, passed as ``options=``.  ``seed=None`` is
`medrecon.registry.DEFAULT_SEED`.  Importing this module imports `medrecon.methods`, which
registers the built-in methods.
"""
from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import medrecon.methods  # noqa: F401  (registers the built-in methods)
from medrecon.methods.priors import PriorCache
from medrecon.physics.coils import estimate_smaps
from medrecon.physics.mri import check_mask
from medrecon.registry import get_method, options_to_dict, resolve_options, seeded_generator

__all__ = ["ReconResult", "reconstruct", "validate_inputs", "check_not_degenerate", "check_samples"]

_OPTIONAL = ("callback", "priors")  # keywords a method function may take (medrecon.registry)


@dataclass
class ReconResult:
    """``image`` ``[..., H, W]``: complex coil-combined (SENSE/ESPIRiT methods) or real
    magnitude (RSS zero-filled, SPIRiT-CG without maps).  ``nfe`` = network evaluations."""

    image: torch.Tensor
    method: str
    options: dict[str, Any]
    nfe: int
    seconds: float
    smaps: torch.Tensor | None = field(default=None, repr=False)
    maps_seconds: float = 0.0  # the part of ``seconds`` spent estimating ``smaps`` (ESPIRiT)
    samples: int = 1  # posterior samples averaged into ``image`` (``reconstruct(samples=K)``)
    std: torch.Tensor | None = field(default=None, repr=False)  # their per-pixel std (K > 1)

    @property
    def magnitude(self) -> torch.Tensor:
        return self.image.abs() if self.image.is_complex() else self.image


def validate_inputs(kspace, mask, smaps=None):
    """Check shapes, dtypes and finiteness; return ``(kspace, mask_float)``."""
    if not isinstance(kspace, torch.Tensor) or not kspace.is_complex():
        raise ValueError("kspace must be a complex torch tensor [..., C, H, W] "
                         f"(got {getattr(kspace, 'dtype', type(kspace).__name__)}); "
                         "single-coil k-space needs a coil axis of 1")
    if kspace.ndim < 3:
        raise ValueError(f"kspace must have shape [..., C, H, W], got {tuple(kspace.shape)}")
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("kspace contains NaN or Inf")
    H, W = kspace.shape[-2:]
    m = check_mask(mask.to(kspace.device) if isinstance(mask, torch.Tensor) else mask, (H, W))
    try:
        torch.broadcast_shapes(m.shape[:-2], kspace.shape[:-3])
    except RuntimeError:
        raise ValueError(f"mask leading dims {tuple(m.shape[:-2])} do not broadcast against the "
                         f"k-space slice dims {tuple(kspace.shape[:-3])}") from None
    if smaps is not None:
        if not isinstance(smaps, torch.Tensor) or not smaps.is_complex():
            raise ValueError("smaps must be a complex torch tensor [..., C, H, W]")
        if smaps.shape[-3:] != kspace.shape[-3:]:
            raise ValueError(f"smaps shape {tuple(smaps.shape)} does not match k-space "
                             f"{tuple(kspace.shape)} in [C, H, W]")
    return kspace, m


def check_not_degenerate(y: torch.Tensor, m: torch.Tensor) -> None:
    """Refuse measurements that carry no information (ValueError): a mask (of any slice)
    sampling nothing, or k-space exactly zero on every sampled location of every slice of the
    call.  Methods would return an all-zero image (or a scaled prior sample) with no error.  A
    blank slice among others is valid data (its image is ~0; the methods clamp their scales)."""
    ms = m.reshape(-1, m.shape[-2], m.shape[-1]).flatten(1).any(1)
    if not bool(ms.all()):
        i = int((~ms).nonzero()[0][0])
        where = f" (mask {i} of {ms.numel()})" if ms.numel() > 1 else ""
        raise ValueError(f"mask samples no k-space location{where}; nothing was measured")
    if not bool((y != 0).any()):
        raise ValueError("kspace is all zero on the sampled locations; an all-zero measurement "
                         "has no image to reconstruct")


@functools.lru_cache(maxsize=None)
def _accepts(fn: Callable) -> frozenset[str]:
    """Which of the optional keywords ``fn`` takes (a plugin may take only the first five arguments)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(_OPTIONAL)
    return frozenset(p.name for p in params if p.name in _OPTIONAL)


def reconstruct(kspace: torch.Tensor, mask: torch.Tensor, method: str = "zero-filled", *,
                smaps: torch.Tensor | None = None, seed: int | None = None,
                callback: Callable[[int, torch.Tensor], None] | None = None,
                priors: PriorCache | None = None, options: Any = None, samples: int = 1,
                **kwargs) -> ReconResult:
    """Reconstruct ``kspace`` ``[..., C, H, W]`` sampled on ``mask`` with a registered method.

    ``samples=K`` (diffusion methods): K posterior samples drawn in one batched run (a leading
    batch axis of K through the network) and averaged -- the Monte-Carlo posterior mean, the
    MMSE estimate that minimises the expected squared error (Jalal et al., NeurIPS 2021, report
    it for CS-MRI) -- with their per-pixel standard deviation in ``std`` (an uncertainty map).
    ``nfe`` is then the network evaluations of all K samples (K x the per-sample count).

    Options: keywords (``steps=50``) or ``options=`` the method's resolved options dataclass (or a
    dict), not both.  ``callback(i, x)`` is called after each sampler step (``i`` from 0, ``x`` the
    sampler's state); methods without steps (the classical ones) never call it.  ``priors``: the
    `medrecon.methods.priors.PriorCache` checkpoints are loaded into (None: the shared default)."""
    spec = get_method(method)
    if spec.modality != "mri":
        raise ValueError(f"method {method!r} is a {spec.modality.upper()} method: reconstruct() takes MRI "
                         f"k-space; reconstruct a scan with medrecon.reconstruct_file")
    if options is not None and kwargs:
        raise ValueError(f"options for method {method!r}: give options= or keywords, not both "
                         f"(got options= and {sorted(kwargs)})")
    opts = resolve_options(spec, kwargs if options is None else options)
    samples = check_samples(samples, spec)
    kspace, m = validate_inputs(kspace, mask, smaps)
    y = kspace * m.unsqueeze(-3)
    check_not_degenerate(y, m)
    dev = kspace.device  # on a GPU the times below cover the queued kernels
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = t_maps = time.perf_counter()
    if spec.needs_smaps and smaps is None:
        smaps = estimate_smaps(y, m, method)
        sync()
        t_maps = time.perf_counter()
    gen = seeded_generator(seed, kspace.device)
    extra = {k: v for k, v in (("callback", callback), ("priors", priors)) if k in _accepts(spec.fn)}
    std = None
    if samples == 1:
        image, nfe = spec.fn(y, m, smaps, opts, gen, **extra)
    else:  # K samples as a leading batch axis: one batched sampler run
        lead = (samples,) + y.shape[:-3]
        maps = None if smaps is None else smaps.expand(*lead, *smaps.shape[-3:]).contiguous()
        draws, nfe = spec.fn(y.expand(*lead, *y.shape[-3:]).contiguous(), m, maps, opts, gen, **extra)
        image = draws.mean(0)
        std = (draws - image).abs().pow(2).mean(0).sqrt()
        nfe = int(nfe) * samples
    sync()
    seconds = time.perf_counter() - t0
    return ReconResult(image=image, method=method, options=options_to_dict(opts), nfe=int(nfe),
                       seconds=seconds, smaps=smaps, maps_seconds=t_maps - t0, samples=samples,
                       std=std)


def check_samples(samples, spec) -> int:
    """``samples`` as an int >= 1; more than one only for a diffusion (stochastic) method."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected an int >= 1, got {samples!r}")
    if samples > 1 and spec.modality != "mri":
        raise ValueError(f"samples={samples}: method {spec.name!r} is a {spec.modality.upper()} method; "
                         "averaging posterior samples is for the MRI diffusion methods")
    if samples > 1 and spec.kind != "diffusion":
        raise ValueError(f"samples={samples}: method {spec.name!r} is deterministic (it draws no "
                         "samples); samples > 1 needs a diffusion method")
    return samples
