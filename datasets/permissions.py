"""Give atomically written outputs the permissions a plain ``open(path, "w")`` would.

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 / 0700 entries so that nobody reads a half
written file; once complete, an output must be readable like any other file the user writes
(0666 / 0777 minus the umask), or colleagues and pipelines on a shared server cannot open it.
"""
from __future__ import annotations

import os

__all__ = ["public_mode"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path, directory: bool = False) -> None:
    """chmod ``path`` (and, for a folder, the files in it) to the umask default."""
    mask = _umask()
    if directory:
        for name in os.listdir(path):
            os.chmod(os.path.join(path, name), 0o666 & ~mask)
        os.chmod(path, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)
