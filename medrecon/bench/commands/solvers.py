"""``medrecon bench solvers``: options, and the report of the sections it runs (tables or JSON).

The measurements are in `medrecon.bench.solvers` (its docstring describes every section).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import numpy as np
import torch

from medrecon.bench import solvers as solvers_module
from medrecon.bench.solver_problems import AnalyticProblem, ModelProblem, reference_trajectory, train_bench_model
from medrecon.bench.solvers import (BENCH_SOLVERS, NFES, SECTIONS, deepcache_rows, deepcache_speed, format_cache,
                                    format_table, rel_err, run)

HELP = "solver error vs NFE (analytic prior, small trained U-Net) and DeepCache speed-up vs error"
DESCRIPTION = (solvers_module.__doc__ or "").split("\n\n")[0]

QUICK = {"size": 16, "batch": 2, "train_steps": 100, "speed_size": 32, "speed_channels": [32, 64, 128],
         "speed_calls": 15, "deepcache_steps": 20}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medrecon bench solvers`` (for the CLI wiring)."""
    p.add_argument("--solvers", nargs="+", default=list(BENCH_SOLVERS), help=f"subset of {BENCH_SOLVERS}")
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
    p.add_argument("--deepcache-solver", default="ddim", help=f"solver for the DeepCache table ({BENCH_SOLVERS})")
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
        if s not in BENCH_SOLVERS:
            raise ValueError(f"--solvers: unknown solver {s!r}; expected names from {BENCH_SOLVERS}")
    if any(n < 1 for n in intervals):
        raise ValueError(f"--deepcache-intervals: expected integers >= 1, got {intervals}")
    if getattr(args, "deepcache_solver", "ddim") not in BENCH_SOLVERS:
        raise ValueError(f"--deepcache-solver: unknown solver {args.deepcache_solver!r}; expected one of {BENCH_SOLVERS}")
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
        ref_err = rel_err(x0, exact.reference(n_train - 1))
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
        for r in records:
            print(json.dumps(r))
    else:
        print("\n\n".join(out))
    return 0
