"""What an output was made with, beyond its options: the medrecon version and the prior's digest.

A reconstruction depends on the weights of its prior as much as on its options: the default
``checkpoint=""`` names whichever prior ships with this medrecon, and a user's checkpoint folder
can be retrained in place.  ``prior_digest(options)`` fingerprints the files behind the
``checkpoint`` option so that `medrecon.batch` resumes only outputs made with the same weights,
and every output records it (`medrecon.pipeline`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["prior_digest", "medrecon_version", "__version__"]

__version__ = "0.1.0"  # medrecon.__version__; equal to pyproject.toml's version (tests/test_readme.py)

_FULL_HASH_BYTES = 64 * 2**20  # larger files are fingerprinted by name, size and mtime
_SUFFIXES = (".json", ".safetensors")


def medrecon_version() -> str:
    return __version__


def _digest_files(files: list[Path], root: Path, h) -> None:
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0".encode())
        if st.st_size <= _FULL_HASH_BYTES:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(2**20), b""):
                    h.update(block)
        else:
            h.update(str(st.st_mtime_ns).encode())


def prior_digest(options: dict[str, Any]) -> str | None:
    """sha256 (first 16 hex digits) of the prior behind ``options["checkpoint"]``; None for a
    method without that option.  ``""`` (the method's shipped default) digests every shipped
    prior, so a medrecon whose shipped weights changed never adopts outputs of the old ones."""
    if "checkpoint" not in options:
        return None
    from medrecon.builtin_priors import BUILTIN_PRIORS, prior_path

    value = str(options.get("checkpoint") or "")
    h = hashlib.sha256()
    if not value:
        roots = [prior_path(n) for n in sorted(BUILTIN_PRIORS)]
    elif value in BUILTIN_PRIORS:
        roots = [prior_path(value)]
    else:
        roots = [Path(value)]
    for root in roots:
        root = Path(root)
        if root.is_dir():
            _digest_files([p for p in root.rglob("*") if p.is_file() and p.suffix in _SUFFIXES],
                          root, h)
        elif root.is_file():
            _digest_files([root], root.parent, h)
        else:
            h.update(f"missing:{root}".encode())
    return h.hexdigest()[:16]
