"""Reconstruction methods registered by name, each with a dataclass of options (STYLE.md).

One registry feeds ``medrecon.reconstruct``, ``medrecon methods``, ``medrecon recon --method``
and the benchmark tables, so a method registered here appears everywhere at once.  An MRI method
is a function ``fn(kspace, mask, smaps, options, generator, callback=None, priors=None) -> (image,
nfe)`` (CT methods: `medrecon.methods.ct`) where ``kspace`` is multi-coil ``[..., C, H, W]``,
``image`` is ``[..., H, W]`` and ``nfe`` counts network evaluations (0 for classical methods);
``callback(i, x)`` reports sampler steps and ``priors`` is the `medrecon.methods.priors.PriorCache`
to load checkpoints from (both optional: a plugin may take only the first five).  Option
dataclasses carry the paper's defaults and round-trip through JSON.

A leaf: it imports no method module.  The built-in methods live in `medrecon.methods`, the only
modules of the package that call `register_method`; `medrecon.reconstruct` imports that package,
so they are registered once ``medrecon`` is imported.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["MethodSpec", "register_method", "get_method", "list_methods", "resolve_options",
           "options_to_dict", "DEFAULT_SEED", "seeded_generator"]

DEFAULT_SEED = 0  # seed=None anywhere (API, CLI, batch) means this seed: results are always reproducible


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a run: ``seed`` (None: `DEFAULT_SEED`) on ``device``."""
    return torch.Generator(device=device).manual_seed(DEFAULT_SEED if seed is None else int(seed))


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., Any]
    options: type
    description: str
    needs_smaps: bool = False
    kind: str = "classical"  # "classical" or "diffusion"
    prior: str | None = None  # the shipped prior the method loads by default (its ``checkpoint`` option)
    modality: str = "mri"  # "mri" (coil k-space in) or "ct" (sinogram in)

    def defaults(self) -> dict[str, Any]:
        return options_to_dict(self.options())


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, options: type, description: str, needs_smaps: bool = False,
                    kind: str = "classical", prior: str | None = None, modality: str = "mri"):
    """Decorator registering ``fn`` under ``name`` with the options dataclass ``options``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options for method {name!r} must be a dataclass")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        if modality not in ("mri", "ct"):
            raise ValueError(f"method {name!r}: modality must be 'mri' or 'ct', got {modality!r}")
        _REGISTRY[name] = MethodSpec(name, fn, options, description, needs_smaps, kind, prior, modality)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; unknown names raise a ValueError listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_methods() -> list[MethodSpec]:
    """Every registered method, by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def options_to_dict(options) -> dict[str, Any]:
    d = dataclasses.asdict(options)
    json.dumps(d)  # options must stay JSON-able
    return d


def _coerce(value, typ, key: str):
    """Convert CLI strings to the field type (int, float, bool, str, optional of those)."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        if value.lower() in ("none", "null"):
            return None
        typ = args[0] if args else str
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float):
            return typ(value)
    except ValueError:
        raise ValueError(f"option {key}={value!r}: expected {typ.__name__}") from None
    return value


def resolve_options(spec: MethodSpec, options=None):
    """Build ``spec.options`` from a dict, rejecting unknown keys (listing the valid ones).  An
    instance of ``spec.options`` is already resolved and returned as is (options are parsed once,
    at the API or CLI edge)."""
    if isinstance(options, spec.options):
        return options
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        raise ValueError(f"options for method {spec.name!r}: expected {spec.options.__name__} or a dict, "
                         f"got {type(options).__name__}")
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {spec.name!r}; valid options: "
                         f"{', '.join(sorted(fields)) or '(none)'}")
    hints = typing.get_type_hints(spec.options)
    kwargs = {k: _coerce(v, hints.get(k, str), k) for k, v in options.items()}
    return spec.options(**kwargs)
