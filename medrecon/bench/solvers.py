"""`medrecon bench solvers`: accuracy vs model calls (NFE) and wall time of every generic solver,
on the exact analytic prior and on a small trained MONAI U-Net, plus DeepCache speed-up vs error.

Sections (each one table):

1. ``analytic``: the eps-model is the exact MMSE predictor of the Gaussian prior
   (`medrecon.GaussianPrior`, `medrecon.bench.solver_problems`) and the reference is the exact probability-flow ODE endpoint, so the
   error is purely the solver's discretisation error (Song et al. 2021 PF-ODE; the DPM-Solver /
   UniPC papers report the same kind of curve).
2. ``trained``: a tiny MONAI ``DiffusionModelUNet`` (eps-prediction, linear betas) trained for a
   few hundred steps on samples of that prior (about a minute on a CPU), or any VP checkpoint
   given with ``--checkpoint``.  There is no closed form, so the reference is a 1000-step solve
   of the same model: DPM-Solver++(2M) through *every* training timestep T-1, ..., 0 and then to
   x0.  One reference run from pure noise at T-1 yields the reference state at every timestep,
   so each solver starts from the reference state at its own first timestep and is compared
   with the same endpoint (PNDM, ending at abar_0 by diffusers' default, with the reference
   state at t = 0).  The accuracy of that 1000-step reference is itself measured on the analytic
   prior and printed under the table.
3. ``deepcache``: the trained model wrapped by ``medrecon.accel.DeepCacheUNet`` at intervals
   N = 2, 3, 5 versus the plain U-Net (N = 1), same x_T, same solver: milliseconds per model
   call, speed-up per step, error against the 1000-step reference and the change against the
   plain-U-Net result.
4. ``deepcache-speed``: the same per-step speed-up at a realistic size (``--speed-size``,
   ``--speed-channels``; default 64x64, channels (64, 128, 256), attention at the deepest level,
   untrained weights: speed does not depend on them), with the number of deep-block calls
   counted by forward hooks to show the deep path really is skipped.

DDPM (stochastic) is left out of 1-2: it does not target the PF-ODE endpoint.  NFE -> steps: one
model call per step, except Heun (2 N - 1 calls) and PNDM (12 pseudo-Runge-Kutta calls first;
budgets below 13 are skipped).  Times are the best of ``--repeats`` runs in this process; compare
ratios, not absolute numbers across machines.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from medrecon.bench.solver_problems import AnalyticProblem, ModelProblem
from medrecon.bench.tables import render_table
from medrecon.bench.timing import best_of
from medrecon.sample import sample, timesteps_for
from medrecon.solvers.pndm import pndm_timesteps

__all__ = ["BENCH_SOLVERS", "NFES", "SECTIONS", "Row", "CacheRow", "steps_for", "rel_err", "run", "deepcache_rows",
           "deepcache_speed", "format_table", "format_cache"]

# the solver variants this bench compares (not medrecon.SOLVERS: "-3m" / "-bh1" are option sets)
BENCH_SOLVERS = ("ddim", "pndm", "dpm-solver++", "dpm-solver++3m", "unipc", "unipc-bh1", "euler", "heun")
NFES = (5, 10, 20, 50)
SECTIONS = ("analytic", "trained", "deepcache", "deepcache-speed")
_SOLVER_ARGS = {"dpm-solver++3m": ("dpm-solver++", {"order": 3}), "unipc-bh1": ("unipc", {"variant": "bh1"})}


@dataclass
class Row:
    solver: str
    nfe: int
    steps: int
    rel_err: float
    seconds: float
    problem: str = "analytic"


@dataclass
class CacheRow:
    interval: int
    full_calls: int
    cached_calls: int
    ms_full: float                          # best time of one full U-Net call
    ms_cached: Optional[float]              # best time of one cached (shallow-path) call
    ms_per_call: float                      # (full_calls * ms_full + cached_calls * ms_cached) / calls
    speedup: float                          # plain U-Net ms per call / ms_per_call
    rel_err: Optional[float] = None         # vs the 1000-step reference (trained model)
    change_vs_full: Optional[float] = None  # ||x_N - x_1|| / ||x_1||, same x_T
    deep_calls: Optional[int] = None        # middle-block calls counted by a forward hook
    problem: str = "trained"


def _end_timestep(solver: str) -> int:
    """-1 (x0, abar = 1) for every solver except PNDM, which by diffusers' default
    (set_alpha_to_one=False) ends at abar_0 of the training table (timestep 0)."""
    return 0 if solver == "pndm" else -1


def steps_for(solver: str, nfe: int, n_train: int = 1000) -> Optional[int]:
    """Solver steps that spend at most ``nfe`` model calls (Heun 2 N - 1 calls, PNDM 12 warm-up
    calls first); None where no step count fits."""
    if solver == "heun":
        return (nfe + 1) // 2
    if solver == "pndm":
        ok = [n for n in range(4, nfe + 1) if len(pndm_timesteps(n, n_train)[0]) <= nfe]
        return max(ok) if ok else None
    return nfe


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def run(solvers=BENCH_SOLVERS, nfes=NFES, size: int = 32, batch: int = 4, seed: int = 0, problem=None,
        betas: Optional[torch.Tensor] = None, repeats: int = 1) -> list[Row]:
    """One Row per (solver, NFE budget) that the solver can meet, on ``problem`` (default: the
    analytic prior).  ``problem`` needs ``betas``, ``eps_fn(x, t)``, ``x_T(t0)`` and
    ``reference(t0, end)`` (``AnalyticProblem`` / ``ModelProblem``)."""
    for s in solvers:
        if s not in BENCH_SOLVERS:
            raise ValueError(f"solvers: expected names from {BENCH_SOLVERS}, got {s!r}")
    for n in nfes:
        if int(n) < 1:
            raise ValueError(f"nfe: expected positive integers, got {list(nfes)}")
    if problem is None:
        problem = AnalyticProblem(size, batch, betas, seed)
    n_train = len(problem.betas)
    rows = []
    for name in solvers:
        solver, opts = _SOLVER_ARGS.get(name, (name, {}))
        for nfe in nfes:
            steps = steps_for(solver, int(nfe), n_train)
            if steps is None or not 1 <= steps <= n_train:
                continue
            t0 = float(timesteps_for(solver, steps, n_train)[0])
            x_T = problem.x_T(t0)
            calls = [0]

            def eps_fn(x, t):
                calls[0] += 1
                return problem.eps_fn(x, t)

            def go():
                calls[0] = 0
                return sample(eps_fn, x_T, solver, steps, problem.betas, **opts)

            out, seconds = best_of(go, repeats)
            err = rel_err(out, problem.reference(t0, _end_timestep(solver)))
            rows.append(Row(name, calls[0], steps, err, seconds, getattr(problem, "name", "custom")))
    return rows


def _count_calls(module: torch.nn.Module) -> tuple[dict, Any]:
    counter = {"n": 0}
    handle = module.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    return counter, handle


def deepcache_rows(problem: ModelProblem, intervals=(2, 3, 5), solver: str = "ddim", steps: int = 50,
                   repeats: int = 1) -> list[CacheRow]:
    """DeepCache (branch 0, uniform interval) on the trained model vs the plain U-Net, same x_T.

    Every model call is timed and classified as full or cached; per-call times are the best over
    all calls of that kind and all ``repeats`` (robust to other load on the machine), and the
    speed-up per step is the plain U-Net's time per call over the DeepCache average per call."""
    from medrecon.accel.deepcache import DeepCacheUNet
    from medrecon.models.wrapper import DiffusionModel

    base = problem.model
    n_train = len(problem.betas)
    solver_name, opts = _SOLVER_ARGS.get(solver, (solver, {}))
    t0 = float(timesteps_for(solver_name, steps, n_train)[0])
    x_T = problem.x_T(t0)
    ref = problem.reference(t0, _end_timestep(solver_name))
    counter, handle = _count_calls(base.net.middle_block)
    rows: list[CacheRow] = []
    try:
        out_full, ms_plain = None, None
        for n in (1,) + tuple(int(v) for v in intervals if int(v) != 1):
            fast = DeepCacheUNet(base.net, interval=n)
            model = DiffusionModel(fast, base.schedule, base.prediction_type)
            best = {"full": math.inf, "cached": math.inf}

            def eps_fn(x, t, _m=model, _fast=fast, _best=best):
                before = _fast.full_calls
                start = time.perf_counter()
                out = _m.eps_fn(x, t)
                kind = "full" if _fast.full_calls > before else "cached"
                _best[kind] = min(_best[kind], time.perf_counter() - start)
                return out

            for _ in range(max(1, repeats)):
                fast.reset()
                counter["n"] = 0
                out = sample(eps_fn, x_T, solver_name, steps, problem.betas, **opts)
            f, c = fast.full_calls, fast.cached_calls
            ms_f = 1e3 * best["full"]
            ms_c = 1e3 * best["cached"] if c else None
            per_call = (f * ms_f + c * (ms_c or 0.0)) / (f + c)
            if n == 1:
                out_full, ms_plain = out, per_call
            rows.append(CacheRow(n, f, c, ms_f, ms_c, per_call, ms_plain / per_call, rel_err(out, ref),
                                 rel_err(out, out_full), counter["n"], "trained"))
    finally:
        handle.remove()
    return rows


def deepcache_speed(size: int = 64, channels=(64, 128, 256), batch: int = 1, intervals=(2, 3, 5),
                    calls: int = 30, repeats: int = 2, seed: int = 0) -> tuple[list[CacheRow], dict]:
    """Time of one plain U-Net call, one DeepCache full call and one DeepCache cached call
    (untrained weights; best of ``calls * repeats`` interleaved samples each, so load on the
    machine hits all three alike), and the per-step speed-up at interval N,
    N t_plain / (t_full + (N - 1) t_cached).  The deep-block (middle-block) calls of ``calls``
    consecutive DeepCache calls at each interval are counted by a forward hook."""
    from medrecon.accel.deepcache import DeepCacheUNet
    from medrecon.models.networks import UNetConfig, build_unet, count_parameters

    channels = tuple(int(c) for c in channels)
    levels = len(channels)
    cfg = UNetConfig(channels=channels, attention_levels=(False,) * (levels - 1) + (True,),
                     num_res_blocks=(2,) * levels, norm_num_groups=min(32, math.gcd(*channels)),
                     num_head_channels=min(64, channels[-1]))
    if size % cfg.downsample_factor:
        raise ValueError(f"--speed-size: {size} must be divisible by {cfg.downsample_factor}")
    net = build_unet(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, size, size, generator=g)
    t = torch.full((batch,), 500.0)
    always = DeepCacheUNet(net, interval=1)
    never = DeepCacheUNet(net, full_steps=[0])  # after its first call every call is a cached one
    best = {"plain": math.inf, "full": math.inf, "cached": math.inf}
    with torch.no_grad():
        net(x, t)
        never(x, t)  # fills the cache
        for _ in range(max(1, calls * repeats)):
            for name, m in (("plain", net), ("full", always), ("cached", never)):
                start = time.perf_counter()
                m(x, t)
                best[name] = min(best[name], time.perf_counter() - start)
        counter, handle = _count_calls(net.middle_block)
        deep, full = {}, {}
        try:
            for n in (1,) + tuple(int(v) for v in intervals if int(v) != 1):
                m = DeepCacheUNet(net, interval=n)
                counter["n"] = 0
                for _ in range(calls):
                    m(x, t)
                deep[n], full[n] = counter["n"], m.full_calls
        finally:
            handle.remove()
    tp, tf, tc = (1e3 * best[k] for k in ("plain", "full", "cached"))
    rows = []
    for n in deep:
        per_call = tp if n == 1 else (full[n] * tf + (calls - full[n]) * tc) / calls
        rows.append(CacheRow(n, full[n], calls - full[n], tp if n == 1 else tf, None if n == 1 else tc,
                             per_call, tp / per_call, deep_calls=deep[n], problem="speed"))
    info = {"size": size, "channels": list(channels), "batch": batch, "calls": calls,
            "samples": calls * repeats, "parameters": count_parameters(net), "threads": torch.get_num_threads()}
    return rows, info


# ------------------------------------------------------------------------------------ output
def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[Row], markdown: bool = False) -> str:
    head = ["solver", "NFE", "steps", "rel. error", "time [ms]"]
    body = [[r.solver, str(r.nfe), str(r.steps), f"{r.rel_err:.3e}", f"{1e3 * r.seconds:.1f}"] for r in rows]
    return render_table(head, body, markdown)


def format_cache(rows: list[CacheRow], markdown: bool = False) -> str:
    head = ["interval N", "full/cached calls", "deep-block calls", "ms full call", "ms cached call",
            "ms per call", "speed-up per step", "rel. error", "change vs full"]
    body = [[("1 (plain U-Net)" if r.interval == 1 else str(r.interval)), f"{r.full_calls}/{r.cached_calls}",
             _fmt(r.deep_calls, "d"), f"{r.ms_full:.2f}", _fmt(r.ms_cached, ".2f"), f"{r.ms_per_call:.2f}",
             f"{r.speedup:.2f}x", _fmt(r.rel_err, ".3e"), _fmt(r.change_vs_full, ".3e")] for r in rows]
    if rows and all(r.rel_err is None for r in rows):
        head, body = head[:-2], [b[:-2] for b in body]
    return render_table(head, body, markdown)


