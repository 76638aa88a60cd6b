"""The trained MRI priors that ship with medrecon (package data under ``medrecon/priors/``).

Each is a medrecon checkpoint directory (``config.json`` + ``model.safetensors``, EMA weights,
no optimizer state) trained by ``medrecon train --recipe ...`` on the simulated multi-coil brain;
how exactly is in ``docs/priors.md``.

- ``brain128-vp``:  VP eps complex-image prior (recipe ``vp``) -- the default of the VP samplers
  (dds, ddnm, diffpir, dps, ccdf, score-mri).
- ``brain128-hfs``: HFS-SDE prior (recipe ``hfs``, acs 10) -- the default of hfs-sde.

Both were trained on 128-wide images normalised by the zero-filled image's maximum, the scale the
posterior methods use with ``normalize=True``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_PRIORS", "prior_path", "resolve_checkpoint", "export_prior"]

_ROOT = Path(__file__).resolve().parent / "priors"

BUILTIN_PRIORS: dict[str, str] = {
    "brain128-vp": "VP eps complex-image prior, simulated brain, 128-wide (recipe vp)",
    "brain128-hfs": "HFS-SDE prior (acs 10), simulated brain, 128-wide (recipe hfs)",
}


def prior_path(name: str) -> Path:
    """The directory of the shipped prior ``name`` (one of ``BUILTIN_PRIORS``)."""
    if name not in BUILTIN_PRIORS:
        raise ValueError(f"unknown builtin prior {name!r}; builtin priors: {', '.join(BUILTIN_PRIORS)}")
    path = _ROOT / name
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"builtin prior {name!r}: {path} lacks config.json / model.safetensors "
                                f"(a broken medrecon installation?)")
    return path


def resolve_checkpoint(checkpoint: str, default: str) -> Path:
    """A checkpoint option -> directory: ``""`` is the builtin ``default``, a builtin name its
    directory, anything else a path (checked by the loader)."""
    if not isinstance(checkpoint, (str, Path)):
        raise ValueError(f"checkpoint: expected a builtin prior name or a directory, got {type(checkpoint).__name__}")
    name = str(checkpoint) or default
    if name in BUILTIN_PRIORS:
        return prior_path(name)
    return Path(name)


def export_prior(run_checkpoint, out_dir, weights: str = "ema-corrected", overwrite: bool = False) -> Path:
    """Write a training checkpoint (``<run>/step-XXXXXXXX``) as a shippable prior: one set of
    weights as ``model.safetensors`` and ``config.json`` -- no optimizer state, no EMA copy.  The
    config keeps the run's extras (objective, HFS process, ...) and adds ``source_step`` and
    ``weights``.  How the shipped priors were made (docs/priors.md).

    ``weights``: ``"ema"`` (the EMA shadow), ``"raw"`` (the trained weights), or ``"ema-corrected"``
    (default): the EMA without its start-up bias.  The shadow after n steps of decay d is
    d^n theta_0 + (1 - d) sum_k d^(n-k) theta_k with theta_0 the initial weights; for short runs
    (n ~ 1/(1 - d)) the d^n theta_0 term shrinks the output (MONAI's zero-initialised last layer), so
    it is removed and the rest renormalised, (shadow - d^n theta_0) / (1 - d^n): an exponentially
    weighted average of the trained weights only (theta_0 rebuilt from the run's seed, as
    ``medrecon.models.train`` builds it).
    """
    from medrecon.models.checkpoint import load_checkpoint, load_model, save_checkpoint
    from medrecon.models.networks import build_unet

    if weights not in ("ema", "raw", "ema-corrected"):
        raise ValueError(f"weights: expected 'ema', 'raw' or 'ema-corrected', got {weights!r}")
    ck = load_checkpoint(run_checkpoint)
    model = load_model(run_checkpoint, use_ema=weights != "raw")
    if weights != "raw" and ck.ema is None:
        raise ValueError(f"weights={weights!r}: {run_checkpoint} has no EMA weights; use weights='raw'")
    if weights == "ema-corrected":
        decay, seed = ck.extra.get("ema_decay"), ck.extra.get("seed")
        if decay is None or seed is None:
            raise ValueError(f"weights='ema-corrected': {run_checkpoint}/config.json lacks ema_decay / seed")
        init = build_unet(ck.network_config, seed=int(seed)).state_dict()
        bias = float(decay) ** int(ck.step)
        state = {k: ((v - bias * init[k]) / (1 - bias)) if v.is_floating_point() else v
                 for k, v in ck.ema.items()}
        model.net.load_state_dict(state)
    extra = {k: v for k, v in ck.extra.items() if k != "network"}
    extra.update(source_step=int(ck.step), weights=weights)
    return save_checkpoint(out_dir, model, {"network": ck.network_config, **extra}, step=ck.step,
                           overwrite=overwrite)
