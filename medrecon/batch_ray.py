"""Running `medrecon.batch`'s tasks on Ray: one task per volume, a clean exit whatever happens.

A local Ray instance started here is shut down on return, on an exception, on SIGINT and on
SIGTERM (`sigterm_exits`); a reaper process (`medrecon.batch_reaper`) stops its processes even
when the driver is killed with SIGKILL, so no Ray agent outlives the batch.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

from medrecon.batch_reaper import start_reaper

__all__ = ["ray_module", "run_on_ray", "sigterm_exits"]


def ray_module():
    """The ray module, or None when the ``distributed`` extra is not installed."""
    try:
        import ray
    except ImportError:
        return None
    return ray


def run_on_ray(ray, task: Callable, jobs: list, report: Callable[[Any, dict[str, Any]], None],
               attempts: Callable[[Any], int], *, address: str | None, local_cpus: int | None,
               num_cpus: float, num_gpus: float, max_retries: int) -> str:
    """One Ray task ``task(job)`` per job, results reported as they arrive (a worker that died
    ``max_retries + 1`` times is a failure with ``attempts(job)`` tries); returns the executor's
    name."""
    local = address in (None, "local")
    started = not ray.is_initialized()
    reaper = None
    if started:
        kw = {"num_cpus": local_cpus} if local else {"address": address}
        before = _children()
        if local:
            reaper = start_reaper()  # before ray.init: a SIGKILL during init is covered too
        try:
            ray.init(include_dashboard=False, **kw)
        except BaseException:
            if reaper is not None:
                reaper.watch(_children() - before - {reaper.pid})
                reaper.close()
            raise
        if reaper is not None:
            reaper.watch(_children() - before - {reaper.pid})
    try:
        # ray.init installs a SIGTERM handler that aborts the driver (exit 134, no clean-up)
        with sigterm_exits():
            _collect(ray, task, jobs, report, attempts, local=local, num_cpus=num_cpus, num_gpus=num_gpus,
                     max_retries=max_retries)
    finally:
        if started:
            try:
                ray.shutdown()
            finally:
                if reaper is not None:
                    reaper.close()
    return f"ray {'local' if local else address}"


def _collect(ray, task_fn, jobs: list, report, attempts, *, local: bool, num_cpus: float, num_gpus: float,
             max_retries: int) -> None:
    """Submit one task per job and report each result as it arrives."""
    have = ray.cluster_resources()
    for key, need in (("CPU", num_cpus), ("GPU", num_gpus)):
        if local and need > have.get(key, 0):  # the task could never be scheduled
            raise ValueError(f"a task asks for {need:g} {key}s but the local Ray instance "
                             f"has {have.get(key, 0):g}")
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                      retry_exceptions=False)(task_fn)
    refs = [task.remote(job) for job in jobs]
    job_of = dict(zip(refs, jobs))
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        job = job_of.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # the worker died max_retries + 1 times
            first = (str(exc).strip().splitlines() or [""])[0]
            out = {"status": "failed", "attempts": attempts(job), "seconds": 0.0,
                   "error": f"{type(exc).__name__}: {first}"}
        report(job, out)


def _children() -> set[int]:
    """PIDs of this process's descendants (empty without psutil)."""
    try:
        import psutil
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:  # noqa: BLE001 -- no psutil, or a race with an exiting child
        return set()


class sigterm_exits:
    """Within the block (main thread only), SIGTERM raises SystemExit, so ``finally`` clauses run:
    the Ray instance is shut down and partial outputs are never published.  The block exits with
    status 143 (128 + SIGTERM) even where Ray re-raises the exit as ``SystemExit(1)``."""

    def __enter__(self):
        self._old, self._got = None, None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        self._got = signum
        raise SystemExit(128 + signum)

    def __exit__(self, exc_type, exc, tb):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        if self._got is not None and exc_type is SystemExit:
            raise SystemExit(128 + self._got) from None
        return False
