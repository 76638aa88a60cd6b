"""`medrecon bench solvers`: accuracy vs model calls (NFE) and wall time of every generic solver,
on the exact analytic prior and on a small trained MONAI U-Net, plus DeepCache speed-up vs error.

Sections (each one table):

1. ``analytic``: the eps-model is the exact MMSE predictor of the Gaussian prior
   (``medrecon.testing``) and the reference is the exact probability-flow ODE endpoint, so the
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

import argparse
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from medrecon.models.schedules import make_betas
from medrecon.sample import _alphas_cumprod, sample, timesteps_for
from medrecon.solvers import dpm_solver_pp
from medrecon.solvers.pndm import pndm_timesteps
from medrecon.testing import GaussianPrior

SOLVERS = ("ddim", "pndm", "dpm-solver++", "dpm-solver++3m", "unipc", "unipc-bh1", "euler", "heun")
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


# ------------------------------------------------------------------------------------ problems
def _end_timestep(solver: str) -> int:
    """-1 (x0, abar = 1) for every solver except PNDM, which by diffusers' default
    (set_alpha_to_one=False) ends at abar_0 of the training table (timestep 0)."""
    return 0 if solver == "pndm" else -1


class AnalyticProblem:
    """The Gaussian-prior problem: exact eps-model, exact PF-ODE reference."""

    name = "analytic"

    def __init__(self, size: int = 32, batch: int = 4, betas: Optional[torch.Tensor] = None, seed: int = 0):
        self.prior = GaussianPrior((size, size))
        self.betas = make_betas("linear", 1000) if betas is None else betas
        self.acp = _alphas_cumprod(self.betas)
        self.eps_fn = self.prior.eps_fn(self.betas)
        self._u = torch.randn(batch, size, size, dtype=torch.complex128,
                              generator=torch.Generator().manual_seed(seed))

    def _abar(self, t: float) -> float:
        return GaussianPrior.abar_at(self.acp, t)

    def x_T(self, t0: float) -> torch.Tensor:
        """A point of one exact PF-ODE trajectory at timestep t0."""
        return self.prior.pf_ode(self._u, 0.0, self._abar(t0))

    def reference(self, t0: float, end: int = -1) -> torch.Tensor:
        """The exact PF-ODE solution from ``x_T(t0)`` to timestep ``end`` (-1: x0)."""
        return self.prior.pf_ode(self.x_T(t0), self._abar(t0), self._abar(end))


def reference_trajectory(eps_fn, x_start: torch.Tensor, acp: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """DPM-Solver++(2M) through every training timestep N-1, ..., 0, then to x0.

    Returns ({t: state at t}, x0) for the run that starts at ``x_start`` = state at N-1.
    """
    n = len(acp)
    ts = torch.arange(n - 1, -1, -1)
    states = {n - 1: x_start}

    def record(d):
        i = int(d["i"])
        if i + 1 < n:
            states[int(ts[i + 1])] = d["x"]

    x0 = dpm_solver_pp(eps_fn, x_start, ts, acp, order=2, callback=record)
    return states, x0


class ModelProblem:
    """A trained VP model; the reference is a 1000-step (every training timestep) solve of it."""

    name = "trained"

    def __init__(self, model, size: int = 32, batch: int = 4, seed: int = 0):
        from medrecon.models.wrapper import is_ve

        if is_ve(model.schedule) or not hasattr(model.schedule, "betas"):
            raise ValueError("--checkpoint: the solver benchmark needs a VP (discrete betas) model, got a VE schedule")
        self.model = model
        self.betas = model.schedule.betas
        self.acp = _alphas_cumprod(self.betas)
        self.eps_fn = model.eps_fn
        g = torch.Generator().manual_seed(seed)
        c = model.in_channels
        if c == 2:
            x = torch.randn(batch, size, size, dtype=torch.complex64, generator=g)
        else:
            x = torch.randn(batch, c, size, size, generator=g)
        self.states, self.x0 = reference_trajectory(self.eps_fn, x, self.acp)

    def x_T(self, t0: float) -> torch.Tensor:
        t = int(round(float(t0)))
        if abs(float(t0) - t) > 1e-6 or t not in self.states:
            raise ValueError(f"t0={t0}: the reference trajectory has states at integer timesteps only")
        return self.states[t]

    def reference(self, t0: float, end: int = -1) -> torch.Tensor:
        return self.x0 if end < 0 else self.states[end]


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def train_bench_model(size: int = 32, steps: int = 300, batch_size: int = 8, seed: int = 0,
                      num_images: int = 256, lr: float = 2e-3, progress: bool = False):
    """A tiny MONAI U-Net (preset "tiny", eps-prediction, linear betas) trained on samples of the
    analytic prior (unit pixel variance): the small trained model of the benchmark."""
    from medrecon.models.train import train

    data = GaussianPrior((size, size)).sample(num_images, generator=torch.Generator().manual_seed(seed + 1))
    with tempfile.TemporaryDirectory(prefix="medrecon-bench-") as tmp:
        res = train("tiny", _Images(data), tmp, steps=steps, batch_size=batch_size, lr=lr, ema_decay=None,
                    grad_clip=1.0, seed=seed, device="cpu", progress=progress)
    res.model.net.eval()
    return res.model, res.losses


# ------------------------------------------------------------------------------------ section runs
def _steps_for(solver: str, nfe: int, n_train: int) -> Optional[int]:
    if solver == "heun":
        return (nfe + 1) // 2
    if solver == "pndm":
        ok = [n for n in range(4, nfe + 1) if len(pndm_timesteps(n, n_train)[0]) <= nfe]
        return max(ok) if ok else None
    return nfe


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run(solvers=SOLVERS, nfes=NFES, size: int = 32, batch: int = 4, seed: int = 0, problem=None,
        betas: Optional[torch.Tensor] = None, repeats: int = 1) -> list[Row]:
    """One Row per (solver, NFE budget) that the solver can meet, on ``problem`` (default: the
    analytic prior).  ``problem`` needs ``betas``, ``eps_fn(x, t)``, ``x_T(t0)`` and
    ``reference(t0, end)`` (``AnalyticProblem`` / ``ModelProblem``)."""
    for s in solvers:
        if s not in SOLVERS:
            raise ValueError(f"solvers: expected names from {SOLVERS}, got {s!r}")
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
            steps = _steps_for(solver, int(nfe), n_train)
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

            out, seconds = _timed(go, repeats)
            err = _rel(out, problem.reference(t0, _end_timestep(solver)))
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
            rows.append(CacheRow(n, f, c, ms_f, ms_c, per_call, ms_plain / per_call, _rel(out, ref),
                                 _rel(out, out_full), counter["n"], "trained"))
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
    return _render(head, body, markdown)


def format_cache(rows: list[CacheRow], markdown: bool = False) -> str:
    head = ["interval N", "full/cached calls", "deep-block calls", "ms full call", "ms cached call",
            "ms per call", "speed-up per step", "rel. error", "change vs full"]
    body = [[("1 (plain U-Net)" if r.interval == 1 else str(r.interval)), f"{r.full_calls}/{r.cached_calls}",
             _fmt(r.deep_calls, "d"), f"{r.ms_full:.2f}", _fmt(r.ms_cached, ".2f"), f"{r.ms_per_call:.2f}",
             f"{r.speedup:.2f}x", _fmt(r.rel_err, ".3e"), _fmt(r.change_vs_full, ".3e")] for r in rows]
    if rows and all(r.rel_err is None for r in rows):
        head, body = head[:-2], [b[:-2] for b in body]
    return _render(head, body, markdown)


def _render(head: list[str], body: list[list[str]], markdown: bool) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    else:
        lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI
QUICK = {"size": 16, "batch": 2, "train_steps": 100, "speed_size": 32, "speed_channels": [32, 64, 128],
         "speed_calls": 15, "deepcache_steps": 20}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medrecon bench solvers`` (for the CLI wiring)."""
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), help=f"subset of {SOLVERS}")
    p.add_argument("--nfe", nargs="+", type=int, default=list(NFES), help="model-call budgets")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="which tables to produce (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="short run: 16x16 images, batch 2, 100 training steps, DeepCache with 20 steps, "
                        "speed test at 32x32 with channels 32 64 128 (explicit options still win)")
    p.add_argument("--size", type=int, default=None, help="image size (analytic prior and trained model; default 32)")
    p.add_argument("--batch", type=int, default=None, help="images per solve (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="time each run this many times, keep the best")
    p.add_argument("--checkpoint", default=None,
                   help="a medrecon checkpoint directory (VP) to use instead of training the tiny model")
    p.add_argument("--train-steps", type=int, default=None, help="training steps of the tiny model (default 300)")
    p.add_argument("--deepcache-intervals", nargs="+", type=int, default=[2, 3, 5])
    p.add_argument("--deepcache-solver", default="ddim", help=f"solver for the DeepCache table ({SOLVERS})")
    p.add_argument("--deepcache-steps", type=int, default=None, help="steps for the DeepCache table (default 50)")
    p.add_argument("--speed-size", type=int, default=None, help="image size of the DeepCache speed test (default 64)")
    p.add_argument("--speed-channels", nargs="+", type=int, default=None,
                   help="U-Net channels of the DeepCache speed test (default 64 128 256)")
    p.add_argument("--speed-calls", type=int, default=None, help="consecutive calls timed (default 30)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--format", default="table", choices=["table", "markdown", "json"])
    p.add_argument("--json", action="store_true", help="same as --format json")


def _opt(args, name: str, default):
    val = getattr(args, name, None)
    if val is not None:
        return val
    return QUICK[name] if getattr(args, "quick", False) and name in QUICK else default


def main(args=None) -> int:
    """Entry point: ``args`` is an argparse Namespace (from the CLI), a list of strings, or None."""
    if args is None or isinstance(args, (list, tuple)):
        p = argparse.ArgumentParser(prog="medrecon bench solvers")
        add_arguments(p)
        args = p.parse_args(args)
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    sections = list(getattr(args, "sections", None) or ["analytic"])
    size, batch = _opt(args, "size", 32), _opt(args, "batch", 4)
    train_steps, dc_steps = _opt(args, "train_steps", 300), _opt(args, "deepcache_steps", 50)
    speed_size, speed_channels = _opt(args, "speed_size", 64), _opt(args, "speed_channels", [64, 128, 256])
    speed_calls, repeats = _opt(args, "speed_calls", 30), max(1, int(getattr(args, "repeats", 1)))
    intervals = list(getattr(args, "deepcache_intervals", [2, 3, 5]))
    if any(n < 1 for n in args.nfe):
        raise ValueError(f"--nfe: expected positive integers, got {args.nfe}")
    if size < 2 or batch < 1:
        raise ValueError(f"--size >= 2 and --batch >= 1 expected, got {size}, {batch}")
    for s in args.solvers:
        if s not in SOLVERS:
            raise ValueError(f"--solvers: unknown solver {s!r}; expected names from {SOLVERS}")
    if any(n < 1 for n in intervals):
        raise ValueError(f"--deepcache-intervals: expected integers >= 1, got {intervals}")
    if getattr(args, "deepcache_solver", "ddim") not in SOLVERS:
        raise ValueError(f"--deepcache-solver: unknown solver {args.deepcache_solver!r}; expected one of {SOLVERS}")
    if train_steps < 1 or dc_steps < 1 or speed_calls < 1:
        raise ValueError("--train-steps, --deepcache-steps and --speed-calls must be >= 1")
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    md = fmt == "markdown"
    out: list[str] = []
    records: list[dict] = []

    def emit(title: str, table: str, note: str = "") -> None:
        out.append(f"{'### ' if md else '== '}{title}\n\n{table}" + (f"\n\n{note}" if note else ""))

    if "analytic" in sections:
        rows = run(args.solvers, args.nfe, size, batch, args.seed, repeats=repeats)
        records += [{"section": "analytic", **asdict(r)} for r in rows]
        emit(f"Analytic Gaussian prior ({size}x{size} complex, batch {batch}, linear betas 1000): "
             "relative error vs the exact PF-ODE solution", format_table(rows, md))

    problem = None
    if {"trained", "deepcache"} & set(sections):
        note = ""
        if args.checkpoint:
            from medrecon.models.checkpoint import load_model

            model = load_model(args.checkpoint)
            cfg = getattr(model, "network_config", None)
            if cfg is not None and size % cfg.downsample_factor:
                raise ValueError(f"--size: {size} must be divisible by {cfg.downsample_factor} for this network")
            what = f"checkpoint {args.checkpoint} ({model.prediction_type}-prediction)"
        else:
            start = time.perf_counter()
            model, losses = train_bench_model(size, train_steps, seed=args.seed)
            k = max(1, len(losses) // 10)
            what = (f"tiny MONAI DiffusionModelUNet (channels 16 32) trained {train_steps} steps on analytic-prior "
                    f"samples in {time.perf_counter() - start:.0f} s (loss {np.mean(losses[:k]):.3f} -> "
                    f"{np.mean(losses[-k:]):.3f})")
        start = time.perf_counter()
        problem = ModelProblem(model, size, batch, args.seed)
        ref_sec = time.perf_counter() - start
        n_train = len(problem.betas)
        exact = AnalyticProblem(size, batch, problem.betas, args.seed)
        st, x0 = reference_trajectory(exact.eps_fn, exact.x_T(n_train - 1), exact.acp)
        ref_err = _rel(x0, exact.reference(n_train - 1))
        note = (f"Model: {what}. Reference: DPM-Solver++(2M) through all {n_train} training timesteps "
                f"({ref_sec:.1f} s); the same {n_train}-step reference on the analytic prior is within "
                f"{ref_err:.1e} of the exact solution.")
        records.append({"section": "trained-info", "model": what, "reference_rel_err_analytic": ref_err})
        if "trained" in sections:
            rows = run(args.solvers, args.nfe, problem=problem, repeats=repeats)
            records += [{"section": "trained", **asdict(r)} for r in rows]
            emit(f"Trained model ({size}x{size}, batch {batch}): relative error vs the {n_train}-step reference",
                 format_table(rows, md), note)
        if "deepcache" in sections:
            rows = deepcache_rows(problem, intervals, args.deepcache_solver, dc_steps, repeats=repeats)
            records += [{"section": "deepcache", **asdict(r)} for r in rows]
            emit(f"DeepCache on the trained model ({args.deepcache_solver}, {dc_steps} steps, same x_T): "
                 "speed-up per step vs error", format_cache(rows, md),
                 "ms: best time of one call of each kind over the run(s); ms per call: their average over the "
                 f"run's full and cached calls; rel. error: vs the {n_train}-step reference; change vs full: "
                 "||x_N - x_plain|| / ||x_plain||; deep-block calls: middle-block forward calls counted by a hook." + ("" if "trained" in sections else
                                                                                     "\n\n" + note))
    if "deepcache-speed" in sections:
        rows, info = deepcache_speed(speed_size, speed_channels, 1, intervals, speed_calls, repeats=max(2, repeats),
                                     seed=args.seed)
        records += [{"section": "deepcache-speed", **info, **asdict(r)} for r in rows]
        emit(f"DeepCache speed per step, {info['size']}x{info['size']}, channels {tuple(info['channels'])}, "
             f"2 res blocks per level, attention at the deepest level ({info['parameters'] / 1e6:.1f}M parameters), "
             f"batch 1, {info['threads']} CPU threads",
             format_cache(rows, md),
             f"ms: best of {info['samples']} interleaved calls of each kind (plain U-Net, DeepCache full, DeepCache "
             f"cached); ms per call = (full t_full + cached t_cached) / {info['calls']} over {info['calls']} "
             f"consecutive calls at interval N (about N t_plain / (t_full + (N - 1) t_cached)); speed-up per step = "
             f"t_plain / ms per call; deep-block calls: middle-block calls counted by a hook over those calls.")
    if fmt == "json":
        import json
        for r in records:
            print(json.dumps(r))
    else:
        print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
