"""Reconstruction methods registered by name, each with a dataclass of options (STYLE.md).

One registry feeds ``medrecon.reconstruct``, ``medrecon methods``, ``medrecon recon --method``
and the benchmark tables, so a method registered here appears everywhere at once.  A method is
a function ``fn(kspace, mask, smaps, options, generator) -> (image, nfe)`` where ``kspace`` is
multi-coil ``[..., C, H, W]``, ``image`` is ``[..., H, W]`` and ``nfe`` counts network
evaluations (0 for classical methods).  Option dataclasses carry the paper's defaults and
round-trip through JSON.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["MethodSpec", "register_method", "get_method", "list_methods", "resolve_options",
           "options_to_dict"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., Any]
    options: type
    description: str
    needs_smaps: bool = False
    kind: str = "classical"  # "classical" or "diffusion"

    def defaults(self) -> dict[str, Any]:
        return options_to_dict(self.options())


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, options: type, description: str, needs_smaps: bool = False,
                    kind: str = "classical"):
    """Decorator registering ``fn`` under ``name`` with the options dataclass ``options``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options for method {name!r} must be a dataclass")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(name, fn, options, description, needs_smaps, kind)
        return fn

    return deco


def _load_builtin() -> None:
    # importing these modules registers their methods
    from medrecon import baselines  # noqa: F401
    from medrecon.posterior import methods  # noqa: F401
    from medrecon.posterior import fdmr  # noqa: F401


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; unknown names raise a ValueError listing the valid ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_methods() -> list[MethodSpec]:
    _load_builtin()
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


def resolve_options(spec: MethodSpec, options: dict[str, Any] | None = None):
    """Build ``spec.options`` from a dict, rejecting unknown keys (listing the valid ones)."""
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {spec.name!r}; valid options: "
                         f"{', '.join(sorted(fields)) or '(none)'}")
    hints = typing.get_type_hints(spec.options)
    kwargs = {k: _coerce(v, hints.get(k, str), k) for k, v in options.items()}
    return spec.options(**kwargs)
