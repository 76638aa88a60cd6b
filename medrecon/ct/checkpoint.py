"""Checkpoints for the CT networks that ``medrecon.models.checkpoint`` cannot describe.

``medrecon.models.checkpoint`` stores a ``DiffusionModelUNet`` + a Gaussian noise schedule; it has
no slot for a MONAI ``AutoencoderKL`` config nor for a cold-diffusion degradation schedule.  This
sibling follows the same rules: a directory with a JSON config and safetensors weights, never
pickle, written atomically (hidden temp directory renamed into place), an existing checkpoint is
replaced only with ``overwrite=True``, and nothing is trusted before it is built: ``config.json``
is checked against the schema below (built from ``medrecon.models.config_schema``'s helpers), the
network's size is capped by arithmetic (``medrecon.models.network_size``), ``files`` must lie inside
the folder and every safetensors header must hold the network's names, shapes and dtypes
(``medrecon.models.weights_file``) before a tensor is read.  Anything that does not fit raises
``CheckpointConfigError`` (a ``ValueError``) naming the file and key.  (The pixel-space DDPM
baseline *does* fit the existing mechanism and uses it.)

Layout::

    config.json          {"format": "medrecon-ct-checkpoint", "version": 1, "kind": ...,
                          "config": {...}, "step": int, "files": {name: file}, "extra": {...}}
    <name>.safetensors   one weights file per entry of ``files`` ("model", optional "ema")

Schema of ``config`` per kind:

- ``ct-autoencoder-kl``: ``{"network": {"type": "monai.AutoencoderKL", "config": AEConfig},
  "scale_factor": number > 0}``.
- ``ct-latent-cold-diffusion``: ``{"network": {"type": "monai.DiffusionModelUNet", "config": UNetConfig},
  "schedule": {"abar": [1, ..., 0] non-increasing, "T": len - 1, "kind": str}, "prediction": "z0",
  "time_input": str}``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from medrecon.models.checkpoint import _check_state, finish_directory, read_config_json
from medrecon.models.config_schema import (MAX_TIMESTEPS, Checker, CheckpointConfigError, envelope, files, groups,
                                           levels, unet)

__all__ = ["CT_FORMAT", "CT_VERSION", "CT_KINDS", "save_ct_checkpoint", "read_ct_checkpoint", "check_state",
           "validate_ct", "read_ct_network", "load_ct_state"]

CT_FORMAT = "medrecon-ct-checkpoint"
CT_VERSION = 1
CT_KINDS = ("ct-autoencoder-kl", "ct-latent-cold-diffusion")
_AE_KEYS = {"channels", "num_res_blocks", "attention_levels", "latent_channels", "norm_num_groups", "norm_eps",
            "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn", "in_channels", "out_channels",
            "spatial_dims"}


def autoencoder(c: Checker, d: Any, key: str) -> Any:
    """An ``AEConfig`` (MONAI ``AutoencoderKL``) from a checked dict."""
    from .autoencoder_net import AEConfig

    df = AEConfig()
    c.obj(d, key, set(), _AE_KEYS)
    ch, attn, nrb = levels(c, d, key, df)
    return AEConfig(
        channels=tuple(ch), attention_levels=tuple(attn), num_res_blocks=tuple(nrb),
        norm_num_groups=groups(c, d, key, ch, df.norm_num_groups),
        latent_channels=c.int(d.get("latent_channels", df.latent_channels), f"{key}.latent_channels", 1, 1024),
        norm_eps=c.num(d.get("norm_eps", df.norm_eps), f"{key}.norm_eps", 0, 1, open_lo=True),
        with_encoder_nonlocal_attn=c.bool(d.get("with_encoder_nonlocal_attn", False),
                                          f"{key}.with_encoder_nonlocal_attn"),
        with_decoder_nonlocal_attn=c.bool(d.get("with_decoder_nonlocal_attn", False),
                                          f"{key}.with_decoder_nonlocal_attn"),
        in_channels=c.int(d.get("in_channels", df.in_channels), f"{key}.in_channels", 1, 1024),
        out_channels=c.int(d.get("out_channels", df.out_channels), f"{key}.out_channels", 1, 1024),
        spatial_dims=c.int(d.get("spatial_dims", df.spatial_dims), f"{key}.spatial_dims", 2, 2))


def cold_schedule(c: Checker, d: Any, key: str) -> None:
    c.obj(d, key, {"abar"}, {"T", "kind"})
    a = c.list(d["abar"], f"{key}.abar", 2, MAX_TIMESTEPS + 1)
    for i, v in enumerate(a):
        c.num(v, f"{key}.abar[{i}]", 0, 1)
    if a[0] != 1 or a[-1] != 0 or any(y > x for x, y in zip(a, a[1:])):
        c.fail(f"{key}.abar", "expected a non-increasing table from 1 (t = 0) to 0 (t = T)")
    if "T" in d and c.int(d["T"], f"{key}.T", 1, MAX_TIMESTEPS) != len(a) - 1:
        c.fail(f"{key}.T", f"expected len(abar) - 1 = {len(a) - 1}, got {d['T']}")
    if "kind" in d:
        c.str(d["kind"], f"{key}.kind", max_len=64)


def validate_ct(cfg: Any, file: Any, kind: str) -> tuple[Any, dict[str, str]]:
    """Check a ``medrecon-ct-checkpoint`` config of ``kind``; return (``AEConfig`` | ``UNetConfig``, files)."""
    if kind not in CT_KINDS:
        raise ValueError(f"kind: expected one of {CT_KINDS}, got {kind!r}")
    c = Checker(file)
    envelope(c, cfg, CT_FORMAT, CT_VERSION, {"kind", "config", "files"}, {"step", "extra"}, "medrecon CT checkpoint")
    if cfg["kind"] != kind:
        c.fail("kind", f"checkpoint holds a {str(cfg['kind'])[:60]!r}, expected a {kind!r}")
    d = cfg["config"]
    if kind == "ct-autoencoder-kl":
        c.obj(d, "config", {"network", "scale_factor"}, set())
        c.obj(d["network"], "config.network", {"type", "config"}, set())
        c.str(d["network"]["type"], "config.network.type", ("monai.AutoencoderKL",))
        net = autoencoder(c, d["network"]["config"], "config.network.config")
        c.num(d["scale_factor"], "config.scale_factor", 0, 1e12, open_lo=True)
    else:
        c.obj(d, "config", {"network", "schedule"}, {"prediction", "time_input"})
        c.obj(d["network"], "config.network", {"type", "config"}, set())
        c.str(d["network"]["type"], "config.network.type", ("monai.DiffusionModelUNet",))
        net = unet(c, d["network"]["config"], "config.network.config")
        cold_schedule(c, d["schedule"], "config.schedule")
        if "prediction" in d:
            c.str(d["prediction"], "config.prediction", ("z0",))
        if "time_input" in d:
            c.str(d["time_input"], "config.time_input", max_len=256)
    return net, files(c, cfg["files"], {"model"}, {"ema"} if kind == "ct-latent-cold-diffusion" else set())


def _network(kind: str, net: Any) -> tuple[Any, Any]:
    """(size, builder) of the network a checked config describes."""
    from medrecon.models.network_size import autoencoder_size, unet_size

    if kind == "ct-autoencoder-kl":
        from .autoencoder_net import CTAutoencoder

        return autoencoder_size(net), lambda: CTAutoencoder(net).net
    from medrecon.models.networks import build_unet

    return unet_size(net), lambda: build_unet(net)


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
    validate_ct(json.loads(text), directory / "config.json", kind)  # what is written, the reader accepts
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
    """(config.json contents, name -> CPU state dict) of a checkpoint of the given ``kind``: schema,
    size cap and weights headers checked (module docstring) before any tensor is read."""
    from medrecon.models.network_size import check_size
    from medrecon.models.weights_file import checked_weights, expected_state, load_tensors

    directory = Path(directory)
    file = directory / "config.json"
    cfg = read_config_json(directory, "medrecon CT checkpoint")
    if not isinstance(cfg, dict) or cfg.get("format") != CT_FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else None
        raise CheckpointConfigError(f"{file}: not a {CT_FORMAT} checkpoint (format {got!r})")
    net, fs = validate_ct(cfg, file, kind)
    size, build = _network(kind, net)
    check_size(size, str(file), CheckpointConfigError)
    expected = expected_state(build, file)
    paths = {name: checked_weights(directory, fs, name, file, expected, size.params) for name in fs}
    return cfg, {name: load_tensors(path, "cpu") for name, path in paths.items()}


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], file: str | Path) -> None:
    """Raise ``CheckpointConfigError`` (a ``ValueError``) unless ``got`` has exactly the keys, shapes and
    dtypes of ``expected``."""
    _check_state(expected, got, Path(file))


def read_ct_network(directory: str | os.PathLike, kind: str, net_type: str, what: str,
                    parse: Callable[[Any, Any], Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """`read_ct_checkpoint`, then the network type (``net_type``) and ``parse(network config,
    config)``, whose KeyError/TypeError/ValueError become ``"invalid {what} config"`` naming
    config.json.  Returns (what ``parse`` returned, config.json contents, weights)."""
    cfg, weights = read_ct_checkpoint(directory, kind)
    file = Path(directory) / "config.json"
    net = cfg["config"].get("network", {})
    if net.get("type") != net_type:
        raise ValueError(f"{file}: unknown network type {net.get('type')!r}")
    try:
        parsed = parse(net["config"], cfg["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{file}: invalid {what} config ({exc})") from None
    return parsed, cfg, weights


def load_ct_state(net: torch.nn.Module, directory: str | os.PathLike, cfg: dict[str, Any],
                  weights: dict[str, dict[str, torch.Tensor]], key: str) -> None:
    """Load ``weights[key]`` into ``net`` once `check_state` has matched it against the net."""
    check_state(net.state_dict(), weights[key], Path(directory) / cfg["files"][key])
    net.load_state_dict(weights[key])
