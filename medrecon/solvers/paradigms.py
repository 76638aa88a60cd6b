"""ParaDiGMS: sequential DDIM/DDPM steps solved as Picard iterations over a sliding window
(Shih, Belkhale, Ermon, Sadigh & Anari, "Parallel Sampling of Diffusion Models", NeurIPS 2023, Alg. 1).

A sampler of N steps is the recursion x_{k+1} = x_k + d_k(x_k) + s_k z_k: drift d_k (network call,
data-consistency hook and update rule of step k) and pre-drawn noise z_k.  Its fixed point also solves

    x_{k+1} = x_b + sum_{j=b..k} d_j(x_j) + sum_{j=b..k} s_j z_j        (k = b .. b + W - 1),

which a Picard sweep evaluates for the whole window [b, b + W) at once: one *batched* network call on the
W current states, then cumulative sums (AndyShih12/paradigms ``paradigms/stablediffusion_paradigms.py``
L190-273).  State k+1 is accepted when ||x_new - x_old||^2 / D <= tol^2 var_{k+1} (L176-183, L250-260;
D elements per image, all images of the batch; var_j the DDPM posterior variance of step j,
``paradigms/paraddim_scheduler.py`` L10-20, 0 after the last step); the window slides past the first
state that is not accepted (that state is exact given its accepted predecessors, L262-264), and the new
states are initialised with the window's last one (L270).  Each sweep accepts >= 1 state, so the
result is the sequential sampler's for tol -> 0 (same noise: drawn in step order from ``generator``,
one draw per step as the sequential loop does), in <= N sweeps ("parallel depth") of <= W network
evaluations each.

The eps function is called as ``eps_fn(X, T)`` with ``X = [W, *x.shape]`` (window states on a new
leading dim) and ``T`` the 1-D tensor of their timesteps; ``medrecon.methods.priors.network_eps``,
``GaussianPrior.eps_fn`` and ``DiffusionModel.eps_fn`` (for a batch dim) accept that.  The data-consistency
hook runs per state, with the same arguments as in the sequential loop.  Stateful eps functions
(DeepCache) do not fit: they assume one call per step in order.

``paradigms`` below is the generic solver (``base`` "ddim" with ``eta``, or "ddpm"); the DDIM-with-DC
update of the posterior samplers runs through ``picard`` from ``medrecon.posterior.ddim_dc``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .base import noise_like, predict_x0, strided_steps

__all__ = ["paradigms", "picard", "check_parallel", "BASES"]

BASES = ("ddim", "ddpm")


def check_parallel(window, tol, max_iters) -> tuple[int, float, Optional[int]]:
    """The ParaDiGMS options as (int, float, int | None), else a clear ValueError."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"paradigms option window: expected an int >= 1 (steps per batched sweep), got {window!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"paradigms option tol: expected a finite number >= 0 (per-step error over the noise "
                         f"std), got {tol!r}")
    if max_iters is not None and (not isinstance(max_iters, int) or isinstance(max_iters, bool) or max_iters < 1):
        raise ValueError(f"paradigms option max_iters: expected None or an int >= 1 (sweeps of one state before "
                         f"it is accepted), got {max_iters!r}")
    return window, float(tol), max_iters


def _error(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean squared change per image ([..., H, W] -> the largest over the batch), on the device."""
    d = (new - old).abs().pow(2)
    return d.reshape(-1, *d.shape[-2:]).mean((-2, -1)).amax() if d.ndim >= 2 else d.mean()


def picard(eps_fn: Callable, x: torch.Tensor, t_dev: torch.Tensor, abar: list, step: Callable, noise: Callable,
           generator: Optional[torch.Generator], *, window: int, tol: float, max_iters: Optional[int] = None,
           callback: Optional[Callable] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """Run an N-step sampler by Picard sweeps (module docstring); return the state after step N.

    ``t_dev``: the N timesteps passed to ``eps_fn`` (device tensor); ``abar``: the N + 1 abar values of
    the states; ``step(k, x_k, eps_k) -> (x_{k+1} without noise, x0_k)``; ``noise(k)``: the scale of
    the noise draw of step k, or None when the sequential loop draws none there.  ``max_iters``: a state
    swept that often is accepted (None: never forced; W sweeps make any state exact).  ``callback``
    gets ``dict(i=, t=, x=, x0=, depth=)`` per accepted step, in order; ``stats`` (a dict) receives
    ``depth`` (sweeps), ``evaluations`` (network evaluations per image), ``steps`` and ``window``."""
    window, tol, max_iters = check_parallel(window, tol, max_iters)
    n = len(t_dev)
    if len(abar) != n + 1:
        raise ValueError(f"abar: expected {n + 1} values (one per state), got {len(abar)}")
    w = min(window, n)
    # error threshold of state j: tol^2 var_j, var_j the DDPM variance of the step from state j (0 at the end)
    var = [(1 - abar[j + 1]) / (1 - abar[j]) * (1 - abar[j] / abar[j + 1]) if abar[j] < 1 and abar[j + 1] > 0
           else 0.0 for j in range(n)] + [0.0]
    limit = torch.tensor([tol ** 2 * max(v, 0.0) for v in var], dtype=torch.float64)
    states = {0: x}
    zs: dict[int, Optional[torch.Tensor]] = {}
    sweeps = [0] * (n + 1)

    def extend(lo: int, hi: int) -> None:  # states lo+1..hi start as state lo; noise drawn in step order
        for k in range(lo, hi):
            states[k + 1] = states[lo]
            scale = noise(k)
            zs[k] = None if scale is None else scale * noise_like(x, generator)

    extend(0, w)
    begin, depth, evals = 0, 0, 0
    while begin < n:
        end = min(begin + w, n)
        xs = torch.stack([states[k] for k in range(begin, end)])
        eps = eps_fn(xs, t_dev[begin:end])
        if eps.shape != xs.shape:
            raise ValueError(f"eps_fn: on a window expected an output of shape {tuple(xs.shape)} (window states "
                             f"on a leading dim, one timestep each), got {tuple(eps.shape)}")
        depth, evals = depth + 1, evals + (end - begin)
        acc, new, x0s, errs = states[begin], {}, {}, []
        for j, k in enumerate(range(begin, end)):
            nxt, x0s[k] = step(k, states[k], eps[j])
            acc = acc + (nxt - states[k]) if zs[k] is None else acc + (nxt - states[k]) + zs[k]
            new[k + 1] = acc
            errs.append(_error(acc, states[k + 1]))
        err = torch.stack(errs).double().cpu()  # one host sync per sweep
        for k in range(begin + 1, end + 1):
            sweeps[k] += 1
        forced = torch.tensor([max_iters is not None and sweeps[k] >= max_iters for k in range(begin + 1, end + 1)])
        bad = ((err > limit[begin + 1:end + 1]) & ~forced).nonzero()
        accepted = begin + (int(bad[0]) + 1 if len(bad) else end - begin)  # states up to here are final
        states.update(new)
        for k in range(begin, accepted):
            del states[k], zs[k]
            if callback is not None:
                callback({"i": k, "t": t_dev[k], "x": states[k + 1], "x0": x0s[k], "depth": depth})
        extend(end, min(accepted + w, n))
        begin = accepted
    if stats is not None:
        stats.update(depth=depth, evaluations=evals, steps=n, window=w)
    return states[n]


def paradigms(eps_fn, x, timesteps, alphas_cumprod, *, base: str = "ddim", eta: float = 0.0, window: int = 10,
              tol: float = 0.1, max_iters: Optional[int] = None, dc=None, callback=None, generator=None,
              prev_timesteps=None, stats: Optional[dict] = None) -> torch.Tensor:
    """``base`` ("ddim" with ``eta``, as ``medrecon.solvers.ddim``; or "ddpm", as ``medrecon.solvers.ddpm``,
    its noise drawn once per step and held fixed) over descending integer ``timesteps`` by ParaDiGMS:
    ``window`` steps per batched sweep, per-step tolerance ``tol`` relative to the noise std (the
    reference default 0.1), ``max_iters`` (see ``picard``).  ``stats``: filled with depth and evaluations."""
    if base not in BASES:
        raise ValueError(f"paradigms option base: expected one of {BASES}, got {base!r}")
    if eta < 0:
        raise ValueError(f"eta: expected >= 0, got {eta}")
    grid = list(strided_steps(timesteps, alphas_cumprod, x.device, prev_timesteps))
    if not grid:
        raise ValueError("timesteps: expected at least one timestep")
    t_dev = torch.stack([g[2] for g in grid])
    abar = [g[3] for g in grid] + [grid[-1][4]]

    def step(k, xk, net):
        _, t, tt, a, ap = grid[k]
        x0, e = predict_x0(lambda *_: net, xk, xk, tt, math.sqrt(a), math.sqrt(1 - a), dc)
        if base == "ddpm":
            return (math.sqrt(ap) * (1 - a / ap) / (1 - a)) * x0 + (math.sqrt(a / ap) * (1 - ap) / (1 - a)) * xk, x0
        std = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        return math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - std ** 2, 0.0)) * e, x0

    def noise(k):
        _, t, _, a, ap = grid[k]
        if base == "ddpm":
            return math.sqrt(max((1 - ap) / (1 - a) * (1 - a / ap), 1e-20)) if t > 0 else None
        return eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) if eta > 0 else None

    return picard(eps_fn, x, t_dev, abar, step, noise, generator, window=window, tol=tol, max_iters=max_iters,
                  callback=callback, stats=stats)
