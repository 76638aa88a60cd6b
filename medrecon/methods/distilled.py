"""Distilled checkpoints run on the grid they were distilled for, or not at all.

A student of progressive distillation (`medrecon.models.distill`, Salimans & Ho, ICLR 2022, Alg. 2)
(reference code: google-research/google-research ``diffusion_distillation/diffusion_distillation/dpm.py``
L250-284, cited in `medrecon.models.distill`; its ``ddim_step`` L312-324 samples on the training grid only)
has learnt one step per interval of one grid: its config.json ``extra["distilled"]`` holds ``steps``
(K) and ``grid`` (the K + 1 times of ``medrecon.posterior.ddim_dc.grid(K, T)``).  On any other grid
its eps is that of no model, so the VP methods call `check_distilled` after loading the prior:
DDIM-with-DC methods (dds, ddnm, diffpir, ccdf; solver "ddim" or "paradigms", which share the grid)
must ask for exactly those times (ccdf runs its tail); any other method or solver is refused.
"""
from __future__ import annotations

from medrecon.models.checkpoint import read_config_json
from medrecon.posterior.ddim_dc import grid

from .priors import VP_PRIOR, checkpoint_dir

__all__ = ["GRID_METHODS", "GRID_SOLVERS", "ETA", "CG_ITERS", "distilled_info", "check_distilled", "default_eta",
           "default_cg_iters"]

GRID_METHODS = ("dds", "ddnm", "diffpir", "ccdf")  # the DDIM-with-DC update on ddim_dc.grid(steps, T)
GRID_SOLVERS = ("ddim", "paradigms")
ETA = 0.85  # DDNM's and DDS's eta (wyhuai/DDNM main.py --eta, HJ-harry/DDS): the methods' default
CG_ITERS = 10  # the data step's CG iterations (DDS repo --CG_iter 5; 10 measured better, posterior/dds.py)


def distilled_info(checkpoint: str, method: str, default: str | None = VP_PRIOR) -> dict | None:
    """``extra["distilled"]`` of the checkpoint (builtin name or directory), None when not distilled."""
    cfg = read_config_json(checkpoint_dir(checkpoint, method, default))
    extra = cfg.get("extra") if isinstance(cfg, dict) else None
    info = extra.get("distilled") if isinstance(extra, dict) else None
    return info if isinstance(info, dict) else None


def check_distilled(opts, method: str, n_train: int, default: str | None = VP_PRIOR) -> None:
    """Raise a ValueError when ``opts.checkpoint`` is distilled for another grid than the one ``method``
    with ``opts.steps`` (and ``opts.solver``) samples on (module docstring)."""
    info = distilled_info(opts.checkpoint, method, default)
    if info is None:
        return
    name, steps, want = opts.checkpoint or default, info.get("steps"), info.get("grid")
    if not isinstance(want, list) or not all(isinstance(t, int) for t in want):
        raise ValueError(f"method {method!r}: checkpoint {name!r} has a malformed extra.distilled.grid {want!r}")
    solver = getattr(opts, "solver", "ddim")
    if method not in GRID_METHODS or solver not in GRID_SOLVERS:
        raise ValueError(f"method {method!r} (solver {solver!r}): checkpoint {name!r} is distilled for {steps} "
                         f"DDIM steps on the grid {want}; it runs only with methods {', '.join(GRID_METHODS)} "
                         f"and solver 'ddim' (or 'paradigms') at steps={steps}")
    asked = [int(t) for t in grid(opts.steps, n_train)]
    if asked != want:
        raise ValueError(f"method {method!r}: checkpoint {name!r} is distilled for steps={steps} (grid {want}), "
                         f"but steps={opts.steps} asks for the grid {asked}; run it with steps={steps}")


def default_eta(opts, method: str, default: str | None = VP_PRIOR) -> float:
    """``opts.eta`` when given; else the ``eta`` a distilled checkpoint's chain was trained with
    (``extra.distilled.eta``, `medrecon.models.distill_chain`), else ``ETA``.  A student trained for a
    deterministic chain (eta 0) loses 1 dB at eta 0.85 (docs/distill.md), so its own eta is its default."""
    if opts.eta is not None:
        if not 0 <= opts.eta <= 1:
            raise ValueError(f"{method} option eta: expected 0 <= eta <= 1, got {opts.eta}")
        return float(opts.eta)
    info = distilled_info(opts.checkpoint, method, default)
    eta = info.get("eta") if info is not None and info.get("method") == "chain" else None
    return float(eta) if isinstance(eta, (int, float)) else ETA


def default_cg_iters(opts, method: str, default: str | None = VP_PRIOR) -> int:
    """``opts.cg_iters`` when given; else the data step's CG iterations a distilled chain checkpoint was
    tuned for (``extra.distilled.cg_iters``), else ``CG_ITERS``.  With noisy k-space the CG data step
    is early-stopped least squares: its iteration count trades aliasing left in against noise
    amplified, and a 4-step chain (4 data steps, not 50) has its own best count (docs/distill.md)."""
    if opts.cg_iters is not None:
        if int(opts.cg_iters) < 1:
            raise ValueError(f"{method} option cg_iters: expected >= 1, got {opts.cg_iters}")
        return int(opts.cg_iters)
    info = distilled_info(opts.checkpoint, method, default)
    it = info.get("cg_iters") if info is not None and info.get("method") == "chain" else None
    return int(it) if isinstance(it, int) and it >= 1 else CG_ITERS
