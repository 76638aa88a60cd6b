"""``sample``: one entry point over the generic solvers, with diffusers' default time-step selection.

What: ``sample(eps_fn, x_T, solver=..., steps=N, betas=...)`` runs the named solver from the VP state
x_T (= sqrt(abar) x0 + sqrt(1 - abar) eps at the first selected timestep, see ``timesteps_for``)
to x_0, calling
``eps_fn(x, t)`` with exactly the timesteps the diffusers scheduler of the same name would pass with
its default config (so a model behaves identically under medrecon and diffusers):

- ``ddpm``:  DDPMScheduler, "leading" spacing (t = k * (T // N)), fixed_small variance.
(diffusers' DDPM/DDIM default ``clip_sample=True`` is NOT copied: no clipping here.)
- ``ddim``:  DDIMScheduler, "leading" spacing, set_alpha_to_one=True, option ``eta`` (default 0).
- ``pndm``:  PNDMScheduler, "leading" spacing, default skip_prk_steps=False (3 Runge-Kutta warm-up
             steps of 4 calls each at t and t - T//N//2, then PLMS); options ``skip_prk_steps``,
             ``set_alpha_to_one`` (default False as diffusers: the result sits at abar_0 of the
             training table, ~1e-4 noise for linear betas, instead of exactly x_0).
- ``dpm-solver++``: DPMSolverMultistepScheduler, "linspace" spacing over N + 1 points (last dropped),
             option ``order`` (2 = 2M default, 3 = 3M), lower_order_final=True, final sigma 0.
- ``unipc``: UniPCMultistepScheduler (bh2, order 2, "linspace"), option ``variant`` in {bh1, bh2}.
- ``paradigms``: ParaDiGMS (Shih et al., NeurIPS 2023; ``medrecon.solvers.paradigms``): the DDIM
             (option ``base="ddim"``, ``eta``) or DDPM (``base="ddpm"``, noise drawn per step, held
             fixed) steps of the ``ddim`` grid as Picard sweeps over a sliding ``window``, one batched
             model call per sweep (``eps_fn(X [W, *x.shape], T [W])``), per-step tolerance ``tol``
             relative to the noise std, ``max_iters``; ``stats`` (a dict) gets depth and evaluations.
- ``euler`` / ``heun``: Euler/HeunDiscreteScheduler, "linspace" float timesteps, sigmas interpolated
             linearly in sigma; x_T is rescaled to the sigma form x sqrt(1 + sigma^2) inside
             (diffusers' own ``init_noise_sigma`` is sigma_max, off by ~2e-5 relative); Heun calls the model
             2N - 1 times, the second stage at the next timestep (diffusers' repeated timesteps).

No clipping of x0 (MRI images are complex, not in [-1, 1]).  Complex tensors work throughout; noise
for complex x is circular with E|z|^2 = 1.  Randomness only through ``generator``.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np
import torch

from medrecon.models.schedules import spacing
from medrecon.solvers import ddim, ddpm, dpm_solver_pp, euler, heun, paradigms, pndm, unipc
from medrecon.solvers.base import alphas_cumprod
from medrecon.solvers.pndm import pndm_timesteps

__all__ = ["sample", "run_solver", "SOLVERS", "PARALLEL_SOLVERS", "solver_options", "timesteps_for", "euler_sigmas",
           "alphas_cumprod", "check_steps"]

SOLVERS = ("ddpm", "ddim", "pndm", "dpm-solver++", "unipc", "euler", "heun")
PARALLEL_SOLVERS = ("paradigms",)  # DDIM/DDPM in parallel form: batched windows, not in SOLVERS' sweeps
_NAMES = SOLVERS + PARALLEL_SOLVERS
_FUNCS = {"ddpm": ddpm, "ddim": ddim, "pndm": pndm, "dpm-solver++": dpm_solver_pp, "unipc": unipc,
          "euler": euler, "heun": heun, "paradigms": paradigms}
_FROM_START = ("ddim", "ddpm", "dpm-solver++", "unipc", "euler", "heun", "paradigms")  # can start mid-grid (not pndm)
_LEADING = ("ddim", "ddpm", "paradigms")  # diffusers' DDIM/DDPM "leading" grid


def check_steps(steps, n_max: int) -> int:
    """``steps`` as an int in [1, n_max], else a clear error."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n_max:
        raise ValueError(f"steps: expected an int in [1, {n_max}], got {steps!r}")
    return int(steps)


def euler_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [N] float, sigmas [N + 1] with trailing 0) as Euler/HeunDiscreteScheduler ("linspace")."""
    n_train = len(alphas_cumprod)
    acp = alphas_cumprod.float().numpy()
    table = ((1 - acp) / acp) ** 0.5
    ts = np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].copy()
    sig = np.interp(ts, np.arange(0, n_train), table)
    return ts, np.concatenate([sig, [0.0]]).astype(np.float32)


def timesteps_for(solver: str, steps: int, n_train: int) -> torch.Tensor:
    """The model-visible timesteps diffusers' default scheduler uses for ``solver`` (one per step;
    for Heun, ``timesteps_for`` gives the N first-stage times and the second stage reuses the next)."""
    if solver in _LEADING:
        return spacing("leading", steps, n_train)
    if solver == "pndm":  # one per model call (12 RK calls at the start), default skip_prk_steps=False
        return torch.from_numpy(pndm_timesteps(steps, n_train)[0])
    if solver in ("dpm-solver++", "unipc"):
        return torch.from_numpy(np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64))
    if solver in ("euler", "heun"):
        return torch.from_numpy(np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].copy())
    raise ValueError(f"solver: expected one of {_NAMES}, got {solver!r}")


def solver_options(solver: str) -> tuple[str, ...]:
    """The keyword options ``sample`` accepts for ``solver`` (besides dc, generator, callback)."""
    if solver not in _NAMES:
        raise ValueError(f"solver: expected one of {_NAMES}, got {solver!r}")
    params = inspect.signature(_FUNCS[solver]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY
                 and p.name not in ("dc", "callback", "generator", "prev_timesteps"))


def run_solver(eps_fn, x, solver: str, steps: int, acp: torch.Tensor, *, start: int = 0, dc=None,
               generator: Optional[torch.Generator] = None, callback=None, **options) -> torch.Tensor:
    """The one dispatch by solver name: run ``solver`` on its ``steps``-step grid of the abar table
    ``acp`` (``alphas_cumprod``) from grid index ``start`` (0 = the whole grid, any solver; > 0 = mid-grid,
    CCDF, not pndm) with the data-consistency hook ``dc``; ``x`` is the state at that grid point."""
    if solver not in _NAMES:
        raise ValueError(f"solver: expected one of {_NAMES}, got {solver!r}")
    unknown = sorted(set(options) - set(solver_options(solver)))
    if unknown:
        valid = list(solver_options(solver)) or "none"
        raise ValueError(f"{solver}: unknown option(s) {unknown}; valid options: {valid}")
    if start and solver not in _FROM_START:
        raise ValueError(f"solver: {solver!r} cannot start mid-grid; use one of {_FROM_START}")
    n_train = len(acp)
    common = {"dc": dc, "callback": callback, "generator": generator}
    if solver in ("euler", "heun"):
        # Heun: timestep of each sigma (the second stage uses the next one, as diffusers repeats them)
        ts, sig = euler_sigmas(acp, steps)
        return _FUNCS[solver](eps_fn, x, torch.from_numpy(ts[start:].copy()), sig[start:], **common, **options)
    if solver == "pndm":
        return pndm(eps_fn, x, steps, acp, **common, **options)
    ts = timesteps_for(solver, steps, n_train)
    if solver in _LEADING:
        prev = ts - n_train // steps
        return _FUNCS[solver](eps_fn, x, ts[start:], acp, prev_timesteps=prev[start:], **common, **options)
    return _FUNCS[solver](eps_fn, x, ts[start:], acp, **common, **options)


def sample(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
           solver: str = "ddim", steps: int = 50, betas: Optional[torch.Tensor] = None, dc=None,
           generator: Optional[torch.Generator] = None, callback=None, **solver_options) -> torch.Tensor:
    """Sample x_0 from x_T with ``solver`` in ``SOLVERS`` or ``PARALLEL_SOLVERS`` over ``steps`` steps of
    the training schedule ``betas`` (see the module docstring for the per-solver timesteps and options)."""
    if solver not in _NAMES:
        raise ValueError(f"solver: expected one of {_NAMES}, got {solver!r}")
    if betas is None:
        raise ValueError("betas: required (1-D tensor of training betas, e.g. make_betas('linear', 1000))")
    acp = alphas_cumprod(betas)
    steps = check_steps(steps, len(acp))
    if not isinstance(x_T, torch.Tensor):
        raise ValueError("x_T: expected a torch.Tensor")
    return run_solver(eps_fn, x_T, solver, steps, acp, dc=dc, generator=generator, callback=callback,
                      **solver_options)
