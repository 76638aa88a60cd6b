"""`medrecon bench solvers`: accuracy vs model calls (NFE) and wall time of every generic solver.

What: for each deterministic solver and NFE budget, run ``medrecon.sample.sample`` on a problem with
a known answer and report the relative error of x_0 and the time.  The default problem is the
analytic Gaussian prior (``medrecon.testing``): the eps-model is the exact MMSE predictor and the
reference is the exact probability-flow ODE endpoint, so the error is purely the solver's
discretisation error (Song et al. 2021 PF-ODE; the DPM-Solver/UniPC papers report the same kind of
curve).  DDPM (stochastic) is left out: it does not target the PF-ODE endpoint.

Hook for trained models: pass ``problem=`` any object with ``eps_fn(x, t)``, ``x_T(abar_T)`` and
``reference(x_T, abar_T, abar_end)`` (e.g. a trained network and a 1000-step DDIM solve as reference);
``run`` does not care where the numbers come from.

NFE -> steps: one model call per step, except Heun (2 N - 1 calls) and PNDM (12 pseudo-Runge-Kutta
calls first; budgets below 13 are skipped).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from medrecon.models.schedules import make_betas
from medrecon.sample import sample, timesteps_for
from medrecon.solvers.pndm import pndm_timesteps
from medrecon.testing import GaussianPrior

SOLVERS = ("ddim", "pndm", "dpm-solver++", "dpm-solver++3m", "unipc", "euler", "heun")
NFES = (5, 10, 20, 50)


@dataclass
class Row:
    solver: str
    nfe: int
    steps: int
    rel_err: float
    seconds: float


class AnalyticProblem:
    """The Gaussian-prior problem: exact eps-model, exact PF-ODE reference."""

    def __init__(self, size: int = 32, batch: int = 4, betas: Optional[torch.Tensor] = None, seed: int = 0):
        self.prior = GaussianPrior((size, size))
        self.betas = make_betas("linear", 1000) if betas is None else betas
        self.eps_fn = self.prior.eps_fn(self.betas)
        self._u = torch.randn(batch, size, size, dtype=torch.complex128,
                              generator=torch.Generator().manual_seed(seed))

    def x_T(self, abar_T: float) -> torch.Tensor:
        return self.prior.pf_ode(self._u, 0.0, abar_T)  # a PF-ODE state at noise level abar_T

    def reference(self, x_T: torch.Tensor, abar_T: float, abar_end: float) -> torch.Tensor:
        return self.prior.pf_ode(x_T, abar_T, abar_end)


def _steps_for(solver: str, nfe: int, n_train: int) -> Optional[int]:
    if solver == "heun":
        return (nfe + 1) // 2
    if solver == "pndm":
        ok = [n for n in range(4, nfe + 1) if len(pndm_timesteps(n, n_train)[0]) <= nfe]
        return max(ok) if ok else None
    return nfe


def run(solvers=SOLVERS, nfes=NFES, size: int = 32, batch: int = 4, seed: int = 0, problem=None,
        betas: Optional[torch.Tensor] = None) -> list[Row]:
    """One Row per (solver, NFE budget) that the solver can meet."""
    for s in solvers:
        if s not in SOLVERS:
            raise ValueError(f"solvers: expected names from {SOLVERS}, got {s!r}")
    if problem is None:
        problem = AnalyticProblem(size, batch, betas, seed)
    betas = problem.betas
    acp = torch.cumprod(1 - torch.as_tensor(betas).float(), 0).double()
    n_train = len(acp)
    rows = []
    for name in solvers:
        solver, opts = ("dpm-solver++", {"order": 3}) if name == "dpm-solver++3m" else (name, {})
        for nfe in nfes:
            steps = _steps_for(solver, nfe, n_train)
            if steps is None or not 1 <= steps <= n_train:
                continue
            t0 = float(timesteps_for(solver, steps, n_train)[0])
            abar_T = GaussianPrior.abar_at(acp, t0)
            abar_end = float(acp[0]) if solver == "pndm" else 1.0  # PNDM's default set_alpha_to_one=False
            x_T = problem.x_T(abar_T)
            calls = [0]

            def eps_fn(x, t):
                calls[0] += 1
                return problem.eps_fn(x, t)

            start = time.perf_counter()
            out = sample(eps_fn, x_T, solver, steps, betas, **opts)
            seconds = time.perf_counter() - start
            ref = problem.reference(x_T, abar_T, abar_end)
            err = ((out - ref).norm() / ref.norm()).item()
            rows.append(Row(name, calls[0], steps, err, seconds))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'solver':<16}{'NFE':>5}{'steps':>7}{'rel. error':>13}{'time [ms]':>11}"]
    for r in rows:
        lines.append(f"{r.solver:<16}{r.nfe:>5}{r.steps:>7}{r.rel_err:>13.3e}{1e3 * r.seconds:>11.1f}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medrecon bench solvers`` (for the CLI wiring)."""
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), help=f"subset of {SOLVERS}")
    p.add_argument("--nfe", nargs="+", type=int, default=list(NFES), help="model-call budgets")
    p.add_argument("--size", type=int, default=32, help="image size of the analytic prior")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def main(args=None) -> int:
    """Entry point: ``args`` is an argparse Namespace (from the CLI), a list of strings, or None."""
    if args is None or isinstance(args, (list, tuple)):
        p = argparse.ArgumentParser(prog="medrecon bench solvers")
        add_arguments(p)
        args = p.parse_args(args)
    if any(n < 1 for n in args.nfe):
        raise ValueError(f"--nfe: expected positive integers, got {args.nfe}")
    if args.size < 2:
        raise ValueError(f"--size: expected >= 2, got {args.size}")
    rows = run(args.solvers, args.nfe, args.size, args.batch, args.seed)
    if args.json:
        import json
        for r in rows:
            print(json.dumps(asdict(r)))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
