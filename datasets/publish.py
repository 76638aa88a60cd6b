"""Publishing outputs: temp file -> final name, never clobbering what another process wrote.

Every medrecon writer builds its output under a `temp_path` next to the destination and then
calls `publish` (or `publish_pair` for an image and its JSON sidecar); `write_published` does
both for a writer given as a function of the temp path:

- **No clobber, atomic against other processes.**  Without ``overwrite`` the temp file is
  hard-linked to the destination (``os.link`` fails with EEXIST if the name exists, checked and
  created in one system call), then the temp name is removed.  Of two concurrent writers exactly
  one wins; the other gets `OutputExistsError`.  Where hard links are unsupported (some FUSE,
  SMB or FAT mounts) ``renameat2(RENAME_NOREPLACE)`` does the same on Linux; failing that, the
  destination is first claimed with ``open(O_CREAT | O_EXCL)`` and the finished file renamed over
  that claim (still one winner; readers may briefly see an empty file).
- **Overwrite** replaces the destination name with ``os.replace`` (atomic: readers see the old or
  the new file, never a partial one; a symlink at the destination is replaced, not followed).
- **Temp names** ``.medrecon-tmp-<host>-<pid>-<token>-<name>`` are hidden (readers skip dot
  files), keep the destination's extension (nibabel picks the compression from it), and say
  which process made them: `remove_stale_temps` deletes those of dead processes on this host.
- **Inputs are never outputs.**  `refuse_input_overlap` compares real paths (symlinks resolved,
  hard links by inode) before any work.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterable

from .permissions import public_mode

__all__ = ["OutputExistsError", "InputOverlapError", "TEMP_PREFIX", "temp_path", "publish",
           "publish_pair", "write_temp", "write_published", "publish_cache", "remove_stale_temps",
           "refuse_input_overlap", "probe_writable", "printable"]

TEMP_PREFIX = ".medrecon-tmp-"
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK,
            errno.EXDEV, errno.EACCES}
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


class OutputExistsError(FileExistsError):
    """The destination exists (or another process published it first) and overwrite is off."""


class InputOverlapError(ValueError):
    """An output would be written onto, inside, or around an input."""


def printable(path) -> str:
    """``path`` as text any terminal or JSON file takes: undecodable bytes of a non-UTF-8 name
    become ``\\xNN`` escapes instead of lone surrogates (which raise on output)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def _exists_msg(dest) -> str:
    return f"{printable(dest)} exists; pass overwrite=True (--overwrite) to replace it"


def temp_path(dest, tag: str = "") -> Path:
    """A fresh hidden temp name next to ``dest`` naming this host and process (not created).

    The name ends with ``dest``'s own name (or just its extension when that is long), so
    format-by-extension writers work on the temp file.
    """
    dest = Path(dest)
    name = dest.name
    if len(os.fsencode(name)) > 160:  # stay under NAME_MAX (255 bytes) with the prefix
        suffix = "".join(dest.suffixes[-2:]) if name.endswith(".nii.gz") else dest.suffix
        name = "long" + suffix[-40:]
    token = uuid.uuid4().hex[:10]
    return dest.parent / f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{token}{tag}-{name}"


def _pid_of(name: str) -> int | None:
    """The pid in a temp name made on this host, else None (another host's or not ours)."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name[len(TEMP_PREFIX):].split("-", 2)
    if len(parts) < 3 or parts[0] != _HOST or not parts[1].isdigit():
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files/folders in ``folder`` left by dead medrecon processes of this host
    (a crash or kill during a write); temps of live processes and other hosts are kept.
    Returns what was removed.  A missing or unreadable folder removes nothing."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        pid = _pid_of(e.name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def _renameat2_noreplace(src, dst) -> bool:
    """Linux ``renameat2(..., RENAME_NOREPLACE)``; False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_NOREPLACE = -100, 1
    if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), os.fspath(dst))
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def _claim_then_replace(tmp, dest) -> None:
    """Last resort without hard links or renameat2: an O_EXCL claim, then rename over it."""
    fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # EEXIST: lost the race
    os.close(fd)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(dest)
        raise


def _link_noreplace(tmp, dest) -> None:
    """Make ``dest`` name the finished ``tmp`` unless ``dest`` exists (FileExistsError); the
    temp name is gone afterwards in every case."""
    try:
        try:
            os.link(tmp, dest, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if not _renameat2_noreplace(tmp, dest):
                _claim_then_replace(tmp, dest)
            return
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def publish(tmp, dest, overwrite: bool = False) -> Path:
    """Move the finished temp file ``tmp`` to ``dest``: no-clobber (`OutputExistsError`, the
    temp removed) unless ``overwrite``, which replaces the destination name atomically.  The
    file gets the permissions of a plain ``open(dest, "w")`` (`public_mode`)."""
    dest = Path(dest)
    try:
        public_mode(tmp)
        if overwrite:
            if os.path.isdir(dest) and not os.path.islink(dest):
                raise IsADirectoryError(f"{printable(dest)} is a folder; not replacing it with "
                                        "a file")
            os.replace(tmp, dest)
        else:
            _link_noreplace(tmp, dest)
    except FileExistsError:
        raise OutputExistsError(_exists_msg(dest)) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return dest


def write_temp(dest, write) -> Path:
    """Call ``write(tmp)`` for a fresh `temp_path` next to ``dest`` (same extension); return
    ``tmp``.  The temp file is removed if ``write`` fails."""
    tmp = temp_path(dest)
    try:
        write(tmp)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def write_published(dest, write, overwrite: bool = True) -> Path:
    """Call ``write(tmp)`` for a temp file next to ``dest``, then `publish` it as ``dest``
    (replacing an existing file unless ``overwrite=False``).  Returns ``dest`` as a Path."""
    return publish(write_temp(dest, write), dest, overwrite)


def publish_cache(dest, write) -> Path:
    """Publish a derived file that every writer makes the same (a prepared data cache): ``write(tmp)``
    then no-clobber `publish`; if another process published ``dest`` first, its file is kept (same
    content) and this one's temp removed.  Returns ``dest`` as a Path."""
    try:
        return publish(write_temp(dest, write), dest, overwrite=False)
    except OutputExistsError:
        return Path(dest)


def _same_file(a, b) -> bool:
    try:
        sa, sb = os.stat(a, follow_symlinks=False), os.stat(b, follow_symlinks=False)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def publish_pair(image_tmp, image_dest, side_tmp, side_dest, overwrite: bool = False) -> Path:
    """Publish an image and its sidecar so that the image is never visible without its sidecar.

    Order: the sidecar first, then the image.  Without ``overwrite`` each is a no-clobber link;
    if the image loses (it exists, or another writer got it first), the sidecar this call just
    published is removed again (only if it is still this call's file) and `OutputExistsError`
    is raised; nothing of this call remains.  With ``overwrite`` the previous sidecar is kept
    under a temp name until the image is replaced, and put back if that fails.
    """
    image_dest, side_dest = Path(image_dest), Path(side_dest)
    keep = None
    try:
        if not overwrite:
            public_mode(side_tmp)
            try:
                os.link(side_tmp, side_dest, follow_symlinks=False)
            except FileExistsError:
                raise OutputExistsError(_exists_msg(side_dest)) from None
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                # no hard links here: plain single-file publishing, then the image
                publish(side_tmp, side_dest)
                try:
                    publish(image_tmp, image_dest)
                except BaseException:
                    os.unlink(side_dest)
                    raise
                return image_dest
            try:
                publish(image_tmp, image_dest)
            except BaseException:
                if _same_file(side_tmp, side_dest):  # still ours: roll back
                    os.unlink(side_dest)
                raise
            return image_dest
        if os.path.lexists(side_dest) and not os.path.isdir(side_dest):
            keep = temp_path(side_dest, "-old")
            os.replace(side_dest, keep)
        publish(side_tmp, side_dest, overwrite=True)
        try:
            publish(image_tmp, image_dest, overwrite=True)
        except BaseException:
            if keep is not None:
                os.replace(keep, side_dest)
                keep = None
            raise
        return image_dest
    finally:
        for p in (side_tmp, image_tmp, keep):
            if p is not None and os.path.lexists(p):
                os.unlink(p)


def probe_writable(folder) -> None:
    """Create and remove a temp file in ``folder``: PermissionError/OSError naming the folder
    if it cannot hold a new file (``os.access`` is wrong for root, ACLs and read-only mounts)."""
    folder = Path(folder)
    probe = temp_path(folder / "probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileNotFoundError:
        raise FileNotFoundError(f"{printable(folder)}: output folder does not exist") from None
    except OSError as exc:
        raise PermissionError(f"{printable(folder)}: cannot write in the output folder "
                              f"({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _real(p) -> str:
    return os.path.realpath(os.fspath(p))


def _inside(child: str, parent: str) -> bool:
    return child != parent and os.path.commonpath([child, parent]) == parent


def refuse_input_overlap(outputs: Iterable, inputs: Iterable, *, folders: Iterable = (),
                         out_dirs: Iterable = ()) -> None:
    """Raise `InputOverlapError` when writing ``outputs`` could touch an input.

    ``outputs``: the files and DICOM series folders a run writes (include a NIfTI output's
    sidecar); ``inputs``: input files (with a NIfTI input's sidecar) and DICOM series folders;
    ``folders``: folders whose files are the inputs (a batch input folder); ``out_dirs``: the
    folders outputs are written into.  Refused: an output that is an input (real path or same
    inode), an output inside an input series folder, an output folder holding an input, and an
    output folder that is an input folder.
    """
    ins = [(Path(i), _real(i)) for i in inputs]
    for o in outputs:
        ro = _real(o)
        for i, ri in ins:
            if ro == ri or _same_file(o, i):
                why = "is the input"
            elif _inside(ro, ri):
                why = "lies inside the input series folder"
            elif _inside(ri, ro):
                why = "is an output folder holding the input"
            else:
                continue
            raise InputOverlapError(f"output {printable(o)} {why} {printable(i)}; inputs are "
                                    "never written: choose another output")
    dirs = [(Path(f), _real(f)) for f in folders] + [(i, ri) for i, ri in ins if os.path.isdir(ri)]
    for d in out_dirs:
        rd = _real(d)
        for f, rf in dirs:
            if rd == rf:
                raise InputOverlapError(f"output folder {printable(d)} is the input folder "
                                        f"{printable(f)}; inputs are never written: choose "
                                        "another output folder")
