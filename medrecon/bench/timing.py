"""Wall-clock timing shared by the benchmarks (``medrecon bench ...``)."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

__all__ = ["best_time_ms", "best_of"]


def best_time_ms(fn: Callable[[], object], repeats: int,
                 device: torch.device | str | None = None) -> float:
    """Best wall time of one call of ``fn`` in ms, after one warm-up call.

    On CUDA every call is followed by a synchronize, so the time covers the queued kernels.
    The minimum over repeats is the least disturbed by other load on the machine.
    """
    dev = torch.device(device) if device is not None else None
    sync = torch.cuda.synchronize if dev is not None and dev.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(result of the last call, best wall time in seconds) over ``repeats`` calls, no warm-up."""
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best
