"""Guards of the readers against corrupt or hostile files.

Allocation: a file's header declares how much it holds, and a corrupt or hostile header (an HDF5
dataset claiming 10^12 elements, a NIfTI ``dim`` of 2^31) must give a clear error *before* the
reader allocates that much, not a MemoryError or a machine brought to swap.  Readers call
`check_read_size` with the bytes they are about to allocate.  The cap is half the physical
memory, or ``MEDRECON_MAX_READ_BYTES`` (bytes) when set.

Errors: the libraries under the readers (pydicom, numpy, zipfile, h5py) raise many exception
types on truncated or bit-flipped files; `reader_errors` turns them into one ValueError that
names the file.
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["max_read_bytes", "check_read_size", "check_h5_dataset", "reader_errors"]


@contextlib.contextmanager
def reader_errors(path, what: str, errors: tuple[type[BaseException], ...]):
    """Inside the block, a ValueError not naming ``path`` gets ``"{path}: "`` in front, and any
    of ``errors`` becomes ``ValueError("{path}: {what} ({type}: {message})")``."""
    try:
        yield
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: {exc}") from None
    except errors as exc:
        raise ValueError(f"{path}: {what} ({type(exc).__name__}: {exc})") from None


def max_read_bytes() -> int:
    """Largest single read a reader may allocate (bytes)."""
    env = os.environ.get("MEDRECON_MAX_READ_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ValueError(f"MEDRECON_MAX_READ_BYTES must be a number of bytes, got {env!r}") \
                from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def check_read_size(nbytes: int, what: str, path) -> None:
    """ValueError naming ``path`` when reading ``what`` (``nbytes``) would exceed the cap."""
    cap = max_read_bytes()
    if nbytes > cap:
        raise ValueError(f"{path}: {what} declares {_human(nbytes)}, more than the read limit of "
                         f"{_human(cap)} (half the memory, or MEDRECON_MAX_READ_BYTES); corrupt "
                         "header or a file too large for this machine")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_h5_dataset(dset, path, what: str | None = None, nbytes: int | None = None) -> None:
    """Before reading ``nbytes`` (default: all) of the h5py dataset ``dset``: the read cap, and,
    for contiguous (unchunked) data, that the file really holds the declared bytes -- a
    truncated file or a header claiming more than is stored fails here, before allocation."""
    what = what or f"dataset {dset.name!r}"
    total = int(dset.size) * dset.dtype.itemsize
    check_read_size(total if nbytes is None else nbytes, what, path)
    import h5py

    plist = dset.id.get_create_plist()
    if total == 0 or plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_external_count():
        return  # chunked: unwritten chunks read as the fill value; compact: in the header
    offset = dset.id.get_offset()
    stored = dset.id.get_storage_size()
    if offset is None or stored < total:
        raise ValueError(f"{path}: {what} declares {_human(total)} but the file stores "
                         f"{_human(stored)} of it (never written, or a corrupt header)")
    size = os.path.getsize(path)
    if offset + total > size:
        raise ValueError(f"{path}: {what} ends at byte {offset + total} but the file has {size} "
                         "bytes (truncated file?)")
