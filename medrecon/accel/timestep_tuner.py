"""Timestep tuner: per-step time shifts for few-step samplers (Xia, Zhang, Wang, Zhao & Lin,
"Towards More Accurate Diffusion Model Acceleration with a Timestep Tuner / Aligner", CVPR 2024).

Why: a few-step solver accumulates discretisation error, so after step i the state x_i no longer
has the noise level the schedule says it has at t_i.  Querying the network at t_i then gives a
slightly wrong direction.  The paper keeps the solver unchanged and only replaces the time fed to
the network by a tuned t_i + delta_i, fitted once per (model, solver, step count) on a few
samples; the shifts are then reused for every sample.

Objective used here (the paper's idea, written for the deterministic DDIM solver it evaluates
on): starting from the same x_T, a reference trajectory x*_i is computed at the coarse times --
with a fine DDIM run of ``fine`` sub-steps per coarse step, or with an exact probability-flow
map when one is known (analytic prior).  Step by step (greedy, in sampling order), with the
tuned state x_i reached so far,

    delta_i = argmin_delta  mean_b || DDIM_{t_i -> t_{i+1}}(x_i, eps(x_i, t_i + delta)) - x*_{i+1} ||^2,

then x_{i+1} is advanced with delta_i.  DDIM (eta = 0) with x_{-1} = x0-hat at the end:
x_{i+1} = sqrt(abar_{i+1}) x0_hat + sqrt(1 - abar_{i+1}) eps,  x0_hat = (x_i - sqrt(1-abar_i) eps)
/ sqrt(abar_i).  The 1-D search is a grid over |delta| <= ``max_shift`` x (gap to the next
timestep) refined by golden section; it costs about (grid + 20) network calls per step on the
fitting batch, plus the reference run.

Use: ``shifts = fit_timestep_shifts(model.eps_fn, x_T, alphas_cumprod, timesteps)``, then sample
with ``shifts.wrap(model.eps_fn)``, which remaps each discrete t the solver passes to t + delta.
``shifts.to_dict()`` is what checkpoints store under ``timestep_shifts``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["TimestepShifts", "fit_timestep_shifts", "ddim_reference_trajectory", "ddim_step",
           "leading_timesteps"]

EpsFn = Callable[[torch.Tensor, Any], torch.Tensor]


def leading_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' default DDIM spacing ("leading"): t_k = k * (N // steps), descending."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps: expected 1..{num_train_timesteps}, got {steps}")
    ratio = num_train_timesteps // steps
    return [k * ratio for k in range(steps)][::-1]


def _abar(alphas_cumprod: torch.Tensor, t: float) -> torch.Tensor:
    """alphas_cumprod at a (possibly fractional) time by linear interpolation; t < 0 gives 1."""
    if t < 0:
        return torch.ones((), dtype=alphas_cumprod.dtype)
    lo = min(int(math.floor(t)), len(alphas_cumprod) - 1)
    hi = min(lo + 1, len(alphas_cumprod) - 1)
    w = t - lo
    return alphas_cumprod[lo] * (1 - w) + alphas_cumprod[hi] * w


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_next: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update (Song et al., ICLR 2021, Eq. 12 with sigma = 0)."""
    x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    return abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps


@dataclass
class TimestepShifts:
    """Tuned shifts: the network is queried at ``timesteps[i] + shifts[i]``."""

    timesteps: list[int]
    shifts: list[float]
    solver: str = "ddim"

    def __post_init__(self) -> None:
        if len(self.timesteps) != len(self.shifts):
            raise ValueError(f"timesteps and shifts must have equal length, got {len(self.timesteps)} "
                             f"and {len(self.shifts)}")

    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "timesteps": [int(t) for t in self.timesteps],
                "shifts": [float(s) for s in self.shifts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimestepShifts":
        try:
            return cls(timesteps=[int(t) for t in d["timesteps"]], shifts=[float(s) for s in d["shifts"]],
                       solver=str(d.get("solver", "ddim")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"timestep_shifts: expected {{'timesteps': [...], 'shifts': [...]}}, got {d!r}") from exc

    def wrap(self, eps_fn: EpsFn, strict: bool = True) -> EpsFn:
        """``eps_fn`` with each tuned timestep remapped to timestep + shift.  With ``strict`` a
        timestep that was not tuned raises (the sampler uses another spacing than the fit)."""
        table = {int(t): float(s) for t, s in zip(self.timesteps, self.shifts)}

        def shifted(x: torch.Tensor, t: Any) -> torch.Tensor:
            tt = torch.as_tensor(t)
            vals = tt.flatten().tolist() if tt.ndim else [tt.item()]
            if any(v != vals[0] for v in vals):
                raise ValueError("t: the timestep tuner expects one timestep per call (same for the batch)")
            key = int(round(vals[0]))
            if key not in table or abs(vals[0] - key) > 1e-6:
                if strict:
                    raise ValueError(f"t={vals[0]}: not among the tuned timesteps {sorted(table, reverse=True)}")
                return eps_fn(x, t)
            new = tt.to(torch.float32) + table[key] if tt.ndim else float(key) + table[key]
            return eps_fn(x, new)

        return shifted


def ddim_reference_trajectory(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor,
                              timesteps: Sequence[int], fine: int = 10) -> list[torch.Tensor]:
    """States at every coarse time (and the final x0) from a DDIM run with ``fine`` sub-steps per
    coarse step, starting at x_T = state at timesteps[0]."""
    ts = list(timesteps) + [-1]
    out = [x_T]
    x = x_T
    for a, b in zip(ts[:-1], ts[1:]):
        sub = [a + (b - a) * k / fine for k in range(fine + 1)]
        for u, v in zip(sub[:-1], sub[1:]):
            x = ddim_step(x, eps_fn(x, u), _abar(alphas_cumprod, u), _abar(alphas_cumprod, v))
        out.append(x)
    return out


def _golden(f: Callable[[float], float], lo: float, hi: float, iters: int) -> float:
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = f(d)
    return c if fc < fd else d


@torch.no_grad()
def fit_timestep_shifts(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    reference: Sequence[torch.Tensor] | None = None,
    fine: int = 10,
    max_shift: float = 0.5,
    grid: int = 11,
    refine_iters: int = 16,
) -> TimestepShifts:
    """Fit one time shift per DDIM step (module docstring) on the batch ``x_T``.

    ``alphas_cumprod``: the model's training schedule (``VPSchedule.alphas_cumprod``);
    ``timesteps``: the descending discrete timesteps the solver will pass to ``eps_fn``;
    ``reference``: optional states at those timesteps and at the end (``len(timesteps) + 1``,
    first = x_T), e.g. from an exact ODE map; otherwise a ``fine``-times finer DDIM run.
    ``eps_fn`` must accept fractional timesteps (MONAI's sinusoidal embedding does).
    """
    ts = [int(t) for t in timesteps]
    if len(ts) < 1 or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps: expected a strictly decreasing list, got {ts}")
    acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if acp.ndim != 1 or ts[0] >= len(acp) or ts[-1] < 0:
        raise ValueError(f"timesteps: must lie in [0, {len(acp) - 1}] of alphas_cumprod, got {ts}")
    if max_shift <= 0 or grid < 3:
        raise ValueError(f"max_shift > 0 and grid >= 3 required, got {max_shift}, {grid}")
    if reference is None:
        reference = ddim_reference_trajectory(eps_fn, x_T, acp, ts, fine)
    if len(reference) != len(ts) + 1:
        raise ValueError(f"reference: expected {len(ts) + 1} states (x_T, each step, x0), got {len(reference)}")
    nxt = ts[1:] + [-1]
    shifts: list[float] = []
    x = x_T
    for i, (t, tn) in enumerate(zip(ts, nxt)):
        a_t, a_n = _abar(acp, t), _abar(acp, tn)
        target = reference[i + 1]
        radius = max_shift * (t - max(tn, 0) if tn >= 0 else max(t, 1))
        lo_lim, hi_lim = max(-radius, -t), min(radius, len(acp) - 1 - t)

        def err(d: float) -> float:
            y = ddim_step(x, eps_fn(x, t + d), a_t, a_n)
            return float((y - target).abs().pow(2).mean())

        cand = [lo_lim + (hi_lim - lo_lim) * k / (grid - 1) for k in range(grid)] + [0.0]
        vals = [err(d) for d in cand]
        k = min(range(len(cand)), key=vals.__getitem__)
        step = (hi_lim - lo_lim) / (grid - 1)
        best = _golden(err, max(lo_lim, cand[k] - step), min(hi_lim, cand[k] + step), refine_iters)
        if err(best) > vals[k]:
            best = cand[k]
        if err(best) > err(0.0):  # never worse than no shift on the fitting batch
            best = 0.0
        shifts.append(float(best))
        x = ddim_step(x, eps_fn(x, t + best), a_t, a_n)
    return TimestepShifts(timesteps=ts, shifts=shifts, solver="ddim")
