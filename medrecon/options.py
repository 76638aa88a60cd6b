"""The one ``[METHOD.]KEY=VALUE`` parser: method options as typed at the CLI, parsed once.

The CLI (``recon``, ``batch``, ``compare``) turns its repeatable ``-o`` strings into an options
dataclass here, once, at the edge (`resolve`, next to `medrecon.registry.resolve_options`, which
does the typing); the pipeline, the batch runner and ``compare`` receive the resolved object and
never parse a string again.  Keys may be written with dashes (``n-corrector``); they become
underscores.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from medrecon.registry import get_method, list_methods, resolve_options

__all__ = ["parse_pairs", "method_pairs", "resolve", "check_option_names"]


def _split(pair: str, flag: str, form: str) -> tuple[str, str]:
    key, sep, value = str(pair).partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} expects {form}, got {pair!r}")
    return key, value


def parse_pairs(pairs: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (dashes in keys become underscores; the last of a
    repeated key wins); a pair without ``=`` or without a key is a ValueError naming ``flag``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, value = _split(pair, flag, "KEY=VALUE")
        out[key.replace("-", "_")] = value
    return out


def _fields(spec) -> set[str]:
    return {f.name for f in dataclasses.fields(spec.options)}


def method_pairs(pairs: Iterable[str], methods: list[str],
                 flag: str = "--option") -> dict[str, dict[str, str]]:
    """``[METHOD.]KEY=VALUE`` pairs -> one option dict per method of ``methods``: ``METHOD.KEY``
    sets the option of that method only, a bare ``KEY`` that option of every method having it
    (a key no method has, or a METHOD not in ``methods``, is a ValueError)."""
    specs = {m: get_method(m) for m in methods}
    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for pair in pairs:
        key, value = _split(pair, flag, "[METHOD.]KEY=VALUE")
        target, dot, key = key.rpartition(".")
        key = key.replace("-", "_")
        if dot:
            if target not in out:
                raise ValueError(f"{flag} {pair!r}: {target!r} is not one of the methods "
                                 f"({', '.join(methods)})")
            out[target][key] = value
            continue
        having = [m for m in methods if key in _fields(specs[m])]
        if not having:
            raise ValueError(f"{flag} {pair!r}: no method of {', '.join(methods)} has option "
                             f"{key!r}")
        for m in having:
            out[m][key] = value
    return out


def resolve(method: str, options: Iterable[str] | dict[str, Any] | None = None):
    """The options dataclass of ``method`` from ``KEY=VALUE`` strings or a dict (string values
    are typed by `medrecon.registry.resolve_options`; unknown keys are ValueErrors listing the
    valid ones)."""
    spec = get_method(method)
    raw = dict(options) if isinstance(options, dict) else parse_pairs(options or ())
    return resolve_options(spec, raw)


def check_option_names(method: str, names: Iterable[str], flag: str = "--{}") -> None:
    """Each option name (set by a CLI shortcut flag such as ``--steps``) must be a field of the
    method's options; the error names the methods that have it."""
    fields = _fields(get_method(method))
    for name in names:
        if name not in fields:
            having = [s.name for s in list_methods() if name in _fields(s)]
            raise ValueError(f"{flag.format(name)}: method {method!r} has no option {name!r}; "
                             f"methods with it: {', '.join(having) or '(none yet)'}")
