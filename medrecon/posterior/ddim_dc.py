"""The DDIM-with-data-consistency update of the official DDNM and DDS loops, shared by ``dds``,
``ddnm``, ``diffpir`` and ``ccdf``.

Each step from grid time t to t' (abar, abar'), with eps the *network's* noise prediction:

    x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)            Tweedie
    x0     = dc(x0_hat, t)                                      data consistency
    x_t'   = sqrt(abar') x0 + sqrt(1 - abar') (sqrt(1 - eta^2) eps + eta z)

as wyhuai/DDNM ``functions/svd_ddnm.py`` L57-65 (``ddnm_diffusion``, c1 = sqrt(1 - abar') eta,
c2 = sqrt(1 - abar') sqrt(1 - eta^2)) and HJ-harry/DDS ``solver_2d.py`` L195-235 (same c1, c2).
The whole correction x0 - x0_hat reaches x_t' with weight sqrt(abar').  A generic solver with a
``dc`` hook (``medrecon.solvers.base.predict_x0``) instead re-derives eps from the corrected x0,
which cancels most of it: at 50 DDIM steps only 10-30% of each correction is passed on.

Grid (``grid``): the "leading" timesteps k T/N, k = N-1 .. 0, then -1 (abar = 1), as both repos
(DDNM ``get_schedule_jump`` times x skip, DDS ``range(0, 1000, skip)`` with ``times_next`` ending
at -1) and diffusers' DDIM.  Departure: DDS (solver_2d.py L234-238) returns x0 at the step into
t = 0 and then spends one more network call at t = 0; here the step into t = 0 is an ordinary
step (abar_0 = 1 - beta_0) and the last step into -1 returns its x0: N calls, the same as DDNM.

``effective_eps=True`` re-derives eps from the corrected x0 (DiffPIR, yuanzhi-zhu/DiffPIR
``main_ddpir_inpainting.py`` L290-293, Alg. 1 "effective noise"; with its eta = 0 its zeta is
``eta**2`` here).

``solver="paradigms"`` (``ddim_dc_parallel``) runs this same update, data step inside, as ParaDiGMS
Picard sweeps over a window of steps (``medrecon.solvers.paradigms``); it converges to ``ddim_dc``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from medrecon.sample import run_solver, timesteps_for
from medrecon.solvers.paradigms import picard

from .common import noise_like, sqrt, step_callback

__all__ = ["ddim_dc", "ddim_dc_parallel", "grid", "run_dc", "PARALLEL_OPTIONS"]

PARALLEL_OPTIONS = ("window", "tol", "max_iters", "stats")  # solver="paradigms" (ddim_dc_parallel)


def grid(steps: int, n_train: int) -> torch.Tensor:
    """The N + 1 grid times (int64, descending): the leading DDIM timesteps and a trailing -1."""
    ts = timesteps_for("ddim", int(steps), int(n_train))
    return torch.cat([ts, torch.tensor([-1], dtype=ts.dtype)])


def ddim_dc(eps_fn: Callable, x: torch.Tensor, times: torch.Tensor, alphas_cumprod: torch.Tensor, *,
            dc: Callable, eta: float = 0.85, generator: Optional[torch.Generator] = None,
            effective_eps: bool = False, callback: Optional[Callable] = None) -> torch.Tensor:
    """Run the update above from ``times[0]`` to ``times[-1]`` (descending int timesteps; -1 means
    abar = 1, where the step returns its x0).  ``x`` is the state at ``times[0]``.

    ``eps_fn(x, t)`` gets ``t`` as a 0-d int64 tensor on x's device; ``dc(x0_hat, t)`` gets it as a
    0-d CPU tensor (no device sync when the hook reads it); ``callback(dict(i=, t=, x=, x0=))``
    runs after each step.  ``eta`` in [0, 1] (0: deterministic; 1: all fresh noise)."""
    t_host, t_dev, abar = _checked(x, times, alphas_cumprod, eta)
    step, noise = _update(abar, t_host, dc, eta, effective_eps)
    for i in range(len(abar) - 1):
        eps = eps_fn(x, t_dev[i])
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn: expected an output of shape {tuple(x.shape)}, got {tuple(eps.shape)}")
        x, x0 = step(i, x, eps)
        scale = noise(i)
        if scale is not None:
            x = x + scale * noise_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": t_dev[i], "x": x, "x0": x0})
    return x


def ddim_dc_parallel(eps_fn: Callable, x: torch.Tensor, times: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                     dc: Callable, eta: float = 0.85, generator: Optional[torch.Generator] = None,
                     effective_eps: bool = False, callback: Optional[Callable] = None, window: int = 10,
                     tol: float = 0.1, max_iters: Optional[int] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """``ddim_dc`` as ParaDiGMS Picard sweeps (``medrecon.solvers.paradigms.picard``): the same update,
    data step and noise draws, ``window`` steps per batched network call (``eps_fn(X [W, *x.shape],
    T [W])``), per-step tolerance ``tol`` (relative to the noise std); converges to ``ddim_dc`` as
    tol -> 0.  ``stats`` receives depth (sweeps) and evaluations."""
    t_host, t_dev, abar = _checked(x, times, alphas_cumprod, eta)
    step, noise = _update(abar, t_host, dc, eta, effective_eps)
    return picard(eps_fn, x, t_dev[:-1], abar, step, noise, generator, window=window, tol=tol,
                  max_iters=max_iters, callback=callback, stats=stats)


def _checked(x, times, alphas_cumprod, eta):
    """(times on the host, on x's device, abar per time) after checking ``eta`` and ``times``."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta: expected 0 <= eta <= 1, got {eta}")
    tl = [int(t) for t in times]
    if len(tl) < 2 or any(b >= a for a, b in zip(tl, tl[1:])) or tl[-1] < -1:
        raise ValueError(f"times: expected >= 2 descending timesteps ending at >= -1, got {tl}")
    t_host = torch.tensor(tl, dtype=torch.int64)
    t_dev = t_host.to(x.device)  # one host-to-device copy, no per-step transfer
    return t_host, t_dev, [float(alphas_cumprod[t]) if t >= 0 else 1.0 for t in tl]


def _update(abar: list, t_host: torch.Tensor, dc: Callable, eta: float, effective_eps: bool):
    """``step(i, x, eps) -> (x' without noise, x0)`` and ``noise(i)`` (the scale of step i's draw, None:
    no draw) of the update in the module docstring."""
    c_eps, c_z = sqrt(1 - eta ** 2), float(eta)

    def step(i, x, eps):
        a, ap = abar[i], abar[i + 1]
        x0 = dc((x - sqrt(1 - a) * eps) / sqrt(a), t_host[i])
        if ap >= 1.0:
            return x0, x0
        if effective_eps:
            eps = (x - sqrt(a) * x0) / sqrt(1 - a)
        return sqrt(ap) * x0 + sqrt(1 - ap) * c_eps * eps, x0

    def noise(i):
        return sqrt(1 - abar[i + 1]) * c_z if c_z > 0 and abar[i + 1] < 1.0 else None
    return step, noise


def run_dc(eps_fn, x, solver: str, steps: int, acp, *, dc, eta: float, generator, start: int = 0,
           callback=None, method: str = "sampler", **solver_options) -> torch.Tensor:
    """``solver="ddim"``: ``ddim_dc`` over ``grid(steps)[start:]`` (the reference update, ``eta``);
    ``"paradigms"``: the same update by Picard sweeps (``ddim_dc_parallel``; options window, tol,
    max_iters, stats); any other name: that generic solver (``medrecon.sample.run_solver``) with ``dc`` as its hook and
    its own ``solver_options`` (``eta`` unused) from grid index ``start``.  ``callback(i, x)`` after
    each step (i counts the steps run)."""
    cb = step_callback(callback)
    if solver == "paradigms":
        unknown = sorted(set(solver_options) - set(PARALLEL_OPTIONS))
        if unknown:
            raise ValueError(f"{method}: unknown option(s) {unknown} for solver 'paradigms' (the reference "
                             f"update in parallel form takes eta and {', '.join(PARALLEL_OPTIONS)})")
        return ddim_dc_parallel(eps_fn, x, grid(steps, len(acp))[start:], acp, dc=dc, eta=eta, generator=generator,
                                callback=cb, **solver_options)
    if solver != "ddim":
        return run_solver(eps_fn, x, solver, int(steps), acp, dc=dc, generator=generator, start=start,
                          callback=cb, **solver_options)
    if solver_options:
        raise ValueError(f"{method}: unknown option(s) {sorted(solver_options)} for solver 'ddim' "
                         f"(the reference DDIM-with-data-consistency update takes eta)")
    return ddim_dc(eps_fn, x, grid(steps, len(acp))[start:], acp, dc=dc, eta=eta, generator=generator,
                   callback=cb)
