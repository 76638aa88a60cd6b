"""Reaper of a local Ray instance started by `medrecon.batch`: no orphans, even after ``kill -9``.

``ray.init()`` starts the GCS, the raylet and the raylet's agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) as descendants of the driver.  ``ray.shutdown()`` stops them on a normal
exit, SIGINT or SIGTERM (`medrecon.batch` turns SIGTERM into ``SystemExit``), but a driver killed
with SIGKILL runs no code: the raylet then exits and its agents live on, re-parented to init
(measured with Ray 2.60: both agents survived ``kill -9`` of ``medrecon batch``).

So the driver starts this module as a separate process in its own session
(``python -m medrecon.batch_reaper``), writes the PIDs of its Ray processes to the reaper's stdin
and keeps the pipe open.  The reaper polls the process tree below those PIDs (each process kept
with its start time, so a re-used PID is never signalled) until the pipe reaches EOF, i.e. the
driver has exited however it died; then it sends SIGTERM to every remembered process still alive,
and SIGKILL to those alive 3 s later.  On a clean exit ``ray.shutdown()`` has already stopped
them and the reaper finds nothing to do.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys

__all__ = ["start_reaper", "Reaper"]

POLL_S = 0.5
GRACE_S = 3.0


class Reaper:
    """The driver's handle: ``watch(pids)`` adds processes; ``close()`` lets the reaper run now."""

    def __init__(self, proc: subprocess.Popen):
        self._proc = proc
        self.pid = proc.pid

    def watch(self, pids) -> None:
        try:
            self._proc.stdin.write("".join(f"{int(p)}\n" for p in pids).encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self, wait: float = 10.0) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def start_reaper() -> Reaper | None:
    """Start the reaper process (None without psutil: then only ``ray.shutdown()`` cleans up)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return None
    proc = subprocess.Popen([sys.executable, "-m", "medrecon.batch_reaper"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # Ctrl-C to the driver's group spares it
    return Reaper(proc)


def _snapshot(psutil, roots: set[int], seen: dict[int, float]) -> None:
    """Add the roots and all their descendants to ``seen`` (pid -> create time)."""
    for pid in list(roots):
        try:
            p = psutil.Process(pid)
            family = [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
        for q in family:
            try:
                seen.setdefault(q.pid, q.create_time())
            except psutil.Error:
                pass


def _alive(psutil, seen: dict[int, float]) -> list:
    out = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def main() -> int:
    import psutil

    fd = sys.stdin.fileno()
    roots: set[int] = set()
    seen: dict[int, float] = {}
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # EOF: the driver has exited (or closed us on purpose)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            roots.update(int(x) for x in lines if x.strip().isdigit())
        _snapshot(psutil, roots, seen)
    _snapshot(psutil, roots, seen)
    procs = [p for p in _alive(psutil, seen) if p.pid != os.getpid()]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
