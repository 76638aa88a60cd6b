"""Checkpoints for the CT networks that ``medrecon.models.checkpoint`` cannot describe.

``medrecon.models.checkpoint`` stores a ``DiffusionModelUNet`` + a Gaussian noise schedule; it has
no slot for a MONAI ``AutoencoderKL`` config nor for a cold-diffusion degradation schedule.  This
sibling follows the same rules: a directory with a JSON config and safetensors weights, never
pickle, written atomically (hidden temp directory renamed into place), an existing checkpoint is
replaced only with ``overwrite=True``, and anything that does not fit (other format or kind,
unknown version, missing / unexpected / wrongly shaped weights) raises ``ValueError`` naming the
file.  (The pixel-space DDPM baseline *does* fit the existing mechanism and uses it.)

Layout::

    config.json          {"format": "medrecon-ct-checkpoint", "version": 1, "kind": ...,
                          "config": {...}, "step": int, "files": {name: file}, "extra": {...}}
    <name>.safetensors   one weights file per entry of ``files`` (e.g. "model", "ema")
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from medrecon.models.checkpoint import finish_directory, read_config_json

__all__ = ["CT_FORMAT", "CT_VERSION", "save_ct_checkpoint", "read_ct_checkpoint", "check_state"]

CT_FORMAT = "medrecon-ct-checkpoint"
CT_VERSION = 1


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_ct_checkpoint(directory: str | os.PathLike, kind: str, config: dict[str, Any],
                       weights: dict[str, dict[str, torch.Tensor]], *, step: int = 0,
                       extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``weights`` (name -> state dict) and the JSON ``config`` atomically; return the path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: checkpoint already exists (pass overwrite=True to replace it)")
    if "model" not in weights:
        raise ValueError("weights: expected a 'model' entry")
    cfg = {"format": CT_FORMAT, "version": CT_VERSION, "kind": kind, "config": config,
           "step": int(step), "files": {name: f"{name}.safetensors" for name in weights},
           "extra": extra or {}}
    text = json.dumps(cfg, indent=1)  # fails before anything is written if not JSON-able
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        for name, state in weights.items():
            save_file(_cpu(state), str(tmp / f"{name}.safetensors"))
        finish_directory(tmp, directory, text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_ct_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(config.json contents, name -> CPU state dict) of a checkpoint of the given ``kind``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    file = directory / "config.json"
    cfg = read_config_json(directory, "medrecon CT checkpoint")
    if not isinstance(cfg, dict) or cfg.get("format") != CT_FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"{file}: not a {CT_FORMAT} checkpoint (format {got!r})")
    if cfg.get("version") != CT_VERSION:
        raise ValueError(f"{file}: unsupported version {cfg.get('version')!r}; this medrecon reads {CT_VERSION}")
    if cfg.get("kind") != kind:
        raise ValueError(f"{file}: checkpoint holds a {cfg.get('kind')!r}, expected a {kind!r}")
    for key in ("config", "files"):
        if not isinstance(cfg.get(key), dict):
            raise ValueError(f"{file}: missing or invalid entry {key!r}")
    weights = {}
    for name, fname in cfg["files"].items():
        wfile = directory / fname
        if not wfile.is_file():
            raise FileNotFoundError(f"{wfile}: file listed in the checkpoint config is missing")
        try:
            weights[name] = load_file(str(wfile), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{wfile}: cannot read safetensors ({exc})") from None
    if "model" not in weights:
        raise ValueError(f"{file}: no 'model' weights listed")
    return cfg, weights


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], file: str | Path) -> None:
    """Raise ``ValueError`` unless ``got`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{file}: weights do not match the network in config.json (missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise ValueError(f"{file}: weight {k!r} has shape {tuple(got[k].shape)}, the network "
                             f"expects {tuple(v.shape)}")
