"""Checkpoint I/O: safetensors weights next to a JSON config -- no pickle, no code execution.

A checkpoint is a directory::

    config.json            format/version, network config, schedule, prediction type, step,
                           timestep-tuner shifts, optimizer hyper-parameters, user extras
    model.safetensors      network weights
    ema.safetensors        EMA weights (optional)
    optimizer.safetensors  optimizer state tensors (optional; the non-tensor part is in JSON)
    rng.safetensors        RNG states for exact resumption (optional)

``load_checkpoint`` reads only JSON and safetensors (``safetensors.torch.load_file``), so a
checkpoint from an untrusted source cannot run code, and it trusts nothing before it builds:
``config.json`` is checked against the schema (``config_schema``), the network's size is computed
by arithmetic and capped (``network_size``), every ``files`` entry must lie inside the folder and
every safetensors header must hold exactly the network's names, shapes and dtypes
(``weights_file``) -- all before a tensor is allocated.  Anything that does not fit raises
``CheckpointConfigError`` (a ``ValueError``) naming the offending file and key; a prediction type
other than the one requested raises ``ValueError``.

Writes are atomic: everything goes into a hidden sibling directory that is renamed into place
at the end, so a crash never leaves a half-written checkpoint; an existing checkpoint is only
replaced when ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config_schema import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointConfigError,
                            validate_checkpoint)
from .network_size import check_size, unet_size
from .networks import UNetConfig, build_unet
from .weights_file import checked_file, checked_weights, expected_state, load_tensors
from .wrapper import PREDICTION_TYPES, DiffusionModel, is_ve

__all__ = [
    "FORMAT", "VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint", "load_model",
    "schedule_to_dict", "schedule_from_dict", "CheckpointConfigError", "MAX_CONFIG_BYTES",
]

FORMAT, VERSION = CHECKPOINT_FORMAT, CHECKPOINT_VERSION  # defined with the schema (config_schema)
CONFIG = "config.json"
MAX_CONFIG_BYTES = 64_000_000  # a config with 100k betas is ~2.5 MB


def schedule_to_dict(schedule: Any) -> dict[str, Any]:
    """JSON description of a ``medrecon.models.schedules`` schedule (exact: betas as floats)."""
    if is_ve(schedule):
        return {"type": "ve", "sigma_min": float(schedule.sigma_min), "sigma_max": float(schedule.sigma_max)}
    betas = getattr(schedule, "betas", None)
    if betas is None:
        raise ValueError(f"schedule: cannot serialise {type(schedule).__name__} (no betas, not VE)")
    return {"type": "vp", "betas": [float(b) for b in torch.as_tensor(betas, dtype=torch.float64).tolist()]}


def schedule_from_dict(d: dict[str, Any]) -> Any:
    from .schedules import VE, VPSchedule

    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "vp":
        return VPSchedule(torch.tensor(d["betas"], dtype=torch.float64))
    if kind == "ve":
        return VE(sigma_min=d["sigma_min"], sigma_max=d["sigma_max"])
    raise ValueError(f"schedule: expected {{'type': 'vp'|'ve', ...}}, got {d!r}")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.  ``model`` holds the (non-EMA) weights."""

    model: DiffusionModel
    network_config: UNetConfig
    step: int
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None  # a torch optimizer state_dict
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep_shifts: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _state(obj: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _optimizer_split(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        entry: dict[str, Any] = {}
        for name, val in st.items():
            if torch.is_tensor(val):
                key = f"{pid}.{name}"
                tensors[key] = val.detach().to("cpu").contiguous().clone()
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": val}
        meta["state"][str(pid)] = entry
    return tensors, meta


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any], file: Path) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        st = {}
        for name, ref in entry.items():
            if "tensor" in ref:
                if ref["tensor"] not in tensors:
                    raise ValueError(f"{file}: missing optimizer tensor {ref['tensor']!r}")
                st[name] = tensors[ref["tensor"]]
            else:
                st[name] = ref["value"]
        state[int(pid)] = st
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | os.PathLike,
    model: DiffusionModel,
    config: UNetConfig | dict[str, Any],
    *,
    ema: nn.Module | dict[str, torch.Tensor] | None = None,
    step: int = 0,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    timestep_shifts: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``config`` is the network's ``UNetConfig`` or a dict ``{"network": UNetConfig | dict, ...}``
    whose other (JSON-able) entries are stored under ``extra``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model: expected a DiffusionModel, got {type(model).__name__}")
    if isinstance(config, UNetConfig):
        net_cfg, extra = config, {}
    elif isinstance(config, dict) and "network" in config:
        net_cfg = config["network"]
        net_cfg = net_cfg if isinstance(net_cfg, UNetConfig) else UNetConfig.from_dict(net_cfg)
        extra = {k: v for k, v in config.items() if k != "network"}
    else:
        raise ValueError("config: expected a UNetConfig or a dict with a 'network' entry")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: checkpoint already exists (pass overwrite=True to replace it)")

    cfg: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "network": {"type": "monai.DiffusionModelUNet", "config": net_cfg.to_dict()},
        "schedule": schedule_to_dict(model.schedule),
        "prediction_type": model.prediction_type,
        "step": int(step),
        "timestep_shifts": timestep_shifts,
        "files": {"model": "model.safetensors"},
        "extra": extra,
    }
    if ema is not None:
        cfg["files"]["ema"] = "ema.safetensors"
    opt_tensors = None
    if optimizer is not None:
        opt_state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        opt_tensors, cfg["optimizer"] = _optimizer_split(opt_state)
        cfg["files"]["optimizer"] = "optimizer.safetensors"
    if rng:
        cfg["files"]["rng"] = "rng.safetensors"
    text = json.dumps(cfg, indent=1)  # not JSON-able: fails before anything is written
    validate_checkpoint(json.loads(text), directory / CONFIG)  # what is written, load_checkpoint reads
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(_state(model.net), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state(ema), str(tmp / "ema.safetensors"))
        if opt_tensors is not None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if rng:
            save_file({k: v.detach().cpu().contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        finish_directory(tmp, directory, text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def swap_directory(tmp: Path, directory: Path) -> None:
    """Move the finished folder ``tmp`` to ``directory``; an existing one is moved aside first
    and removed only after the swap, so a crash never leaves neither.  The new folder and its files
    get the umask's default permissions (``mkdtemp`` made it 0700: colleagues could not read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    for root, dirs, files in os.walk(tmp):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    os.chmod(tmp, 0o777 & ~mask)
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        os.replace(directory, old / "ckpt")
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def finish_directory(tmp: Path, directory: Path, config: dict[str, Any] | str) -> None:
    """Write ``config`` (a dict or its JSON text) as ``config.json`` into the staged folder ``tmp``,
    flushed to disk, then swap the folder into place (`swap_directory`)."""
    text = config if isinstance(config, str) else json.dumps(config, indent=1)
    with open(tmp / CONFIG, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    swap_directory(tmp, directory)


def read_config_json(directory: Path, what: str = "medrecon checkpoint") -> Any:
    """The parsed ``config.json`` of a checkpoint folder; a clear error when missing, too large or
    not JSON (deep nesting and over-long integers included)."""
    file = directory / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no checkpoint config (is {directory} a {what}?)")
    size = file.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointConfigError(f"{file}: {size} bytes, over the {MAX_CONFIG_BYTES} bytes a config may have")
    try:
        return json.loads(file.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise CheckpointConfigError(f"{file}: not valid JSON ({str(exc)[:120]})") from None


def _check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse ``got`` unless it has exactly the names, shapes and dtypes of ``expected`` (never cast)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointConfigError(
            f"{file}: weights do not match the network in config.json "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointConfigError(f"{file}: weight {k!r} has shape {tuple(got[k].shape)}, the network "
                                        f"expects {tuple(v.shape)}")
        if got[k].dtype != v.dtype:
            raise CheckpointConfigError(f"{file}: weight {k!r} is {got[k].dtype}, the network expects {v.dtype}")


def load_checkpoint(
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    prediction_type: str | None = None,
) -> Checkpoint:
    """Rebuild network + schedule + parameterization and load the weights (no code executed).

    ``prediction_type``, if given, must equal the checkpoint's (a model trained for eps cannot be
    loaded as a v-model; ask the wrapper for another prediction instead).
    """
    directory = Path(directory)
    file = directory / CONFIG
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
    cfg = read_config_json(directory)
    net_cfg, files = validate_checkpoint(cfg, file)  # 1. schema: types, ranges, keys
    size = unet_size(net_cfg)
    check_size(size, str(file), CheckpointConfigError)  # 2. arithmetic size cap
    if prediction_type is not None and cfg["prediction_type"] != prediction_type:
        raise ValueError(
            f"{file}: checkpoint predicts {cfg['prediction_type']!r}, but {prediction_type!r} was requested "
            f"(the network was trained for {cfg['prediction_type']!r}; load it as such and ask the "
            f"DiffusionModel for other predictions with .predict(kind, x, t))"
        )
    # 3. files inside the folder, headers equal to the network's state dict (built on `meta`)
    expected = expected_state(lambda: build_unet(net_cfg), file)
    wfile = checked_weights(directory, files, "model", file, expected, size.params)
    efile = checked_weights(directory, files, "ema", file, expected, size.params) if "ema" in files else None
    ofile = (checked_file(directory, files, "optimizer", file, 4 * size.params + 10 ** 6)
             if "optimizer" in files else None)
    rfile = checked_file(directory, files, "rng", file, 10 ** 7) if "rng" in files else None
    # 4. only now: build and load
    schedule = schedule_from_dict(cfg["schedule"])
    net = build_unet(net_cfg)
    model = DiffusionModel(net, schedule, cfg["prediction_type"], network_config=net_cfg)
    net.load_state_dict(load_tensors(wfile, "cpu"))
    net.to(map_location)
    ema = load_tensors(efile, map_location) if efile is not None else None
    optimizer = _optimizer_join(load_tensors(ofile, map_location), cfg["optimizer"], ofile) if ofile else None
    rng = load_tensors(rfile, "cpu") if rfile is not None else {}
    return Checkpoint(
        model=model, network_config=net_cfg, step=int(cfg.get("step", 0)), ema=ema,
        optimizer=optimizer, rng=rng, timestep_shifts=cfg.get("timestep_shifts"),
        extra=cfg.get("extra", {}), path=directory,
    )


def load_model(
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    prediction_type: str | None = None,
    use_ema: bool = True,
) -> DiffusionModel:
    """The model ready for sampling: EMA weights when saved (and ``use_ema``), in eval mode."""
    ck = load_checkpoint(directory, map_location, prediction_type)
    if use_ema and ck.ema is not None:
        ck.model.net.load_state_dict(ck.ema)
    return ck.model.eval()
