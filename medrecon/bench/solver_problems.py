"""The test problems of ``medrecon bench solvers``: where the exact answer of a solve comes from.

- `AnalyticProblem`: the eps-model is the exact MMSE predictor of the Gaussian prior
  (`medrecon.GaussianPrior`) and the reference is the exact probability-flow ODE endpoint, so
  a solver's error is purely its discretisation error (Song et al. 2021 PF-ODE).
- `ModelProblem`: a trained VP model; no closed form, so the reference is a 1000-step solve of
  the same model (`reference_trajectory`: DPM-Solver++(2M) through every training timestep).
- `train_bench_model`: the tiny MONAI U-Net trained on analytic-prior samples used by default.
"""
from __future__ import annotations

import tempfile
from typing import Optional

import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.schedules import make_betas
from medrecon.sample import alphas_cumprod
from medrecon.solvers import dpm_solver_pp

__all__ = ["AnalyticProblem", "ModelProblem", "reference_trajectory", "train_bench_model"]


class AnalyticProblem:
    """The Gaussian-prior problem: exact eps-model, exact PF-ODE reference."""

    name = "analytic"

    def __init__(self, size: int = 32, batch: int = 4, betas: Optional[torch.Tensor] = None, seed: int = 0):
        self.prior = GaussianPrior((size, size))
        self.betas = make_betas("linear", 1000) if betas is None else betas
        self.acp = alphas_cumprod(self.betas)
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
        self.acp = alphas_cumprod(self.betas)
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
