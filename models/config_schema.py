"""The schema of checkpoint ``config.json`` files, checked before anything is built (issue 15).

Three formats, one set of rules:

- ``medrecon-checkpoint`` (``models/checkpoint.py``: priors, the CT pixel DDPM): ``format``,
  ``version``, ``network`` = ``{"type": "monai.DiffusionModelUNet", "config": UNET}``, ``schedule`` =
  ``{"type": "vp", "betas": [...]}`` | ``{"type": "ve", "sigma_min", "sigma_max"}``,
  ``prediction_type``, ``files`` (``model`` required; ``ema``, ``optimizer``, ``rng``), optional
  ``step``, ``timestep_shifts``, ``optimizer``, ``extra``.
- ``medrecon-ddgan`` (``models/ddgan.py``): ``config`` = DDGAN (``unet`` a UNET or a preset name),
  ``files`` (``generator``, ``discriminator`` required; ``ema``, ``opt_g``, ``opt_d``), ``opt_g``/``opt_d``.
- ``medrecon-ct-checkpoint``: its schema (AutoencoderKL, latent cold diffusion) is in
  ``medrecon/ct/checkpoint.py``, built from the helpers here (``Checker``, ``unet``, ``envelope``, ...).

Types are strict (an integer is a JSON integer, not ``true`` nor ``16.0``; numbers are finite) and
every integer has a range.  Unknown keys are errors everywhere (a key this version does not read
could change the network), except inside ``extra``, the free-form slot for user data, where only the
entries loaders read are checked: ``hfs``, ``ema_decay``, ``seed``.  Missing network keys take the
dataclass defaults (``UNetConfig``, ``AEConfig``, ``DDGANConfig``); the weights' shapes then decide.
Every violation raises ``CheckpointConfigError`` (a ``ValueError``): one line naming the file and key.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["CheckpointConfigError", "Checker", "validate_checkpoint", "validate_ddgan", "unet", "levels",
           "groups", "files", "extra", "envelope", "MAX_LEVELS", "MAX_WIDTH", "MAX_TIMESTEPS"]

# format names and versions of the checkpoint kinds (written by checkpoint.py and ddgan.py)
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "medrecon-checkpoint", 1
DDGAN_FORMAT, DDGAN_VERSION = "medrecon-ddgan", 1
MAX_LEVELS = 8  # U-Net / autoencoder levels (downsampling 2**7)
MAX_WIDTH = 16384  # channels of one level
MAX_TIMESTEPS = 100_000  # betas / abar / timestep_shifts entries
MAX_INT = 2 ** 53  # JSON-safe integers; keeps the size arithmetic in float range


class CheckpointConfigError(ValueError):
    """A checkpoint's ``config.json`` (or a file it lists) does not fit the schema."""


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


class Checker:
    """Typed accessors that raise ``CheckpointConfigError`` as ``<file>: <key>: <what is wrong>``."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def fail(self, key: str, msg: str) -> None:
        raise CheckpointConfigError(f"{self.file}: {key}: {msg}")

    def expect(self, key: str, what: str, got: Any) -> None:
        self.fail(key, f"expected {what}, got {_show(got)}")

    def obj(self, v: Any, key: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(v, dict):
            self.expect(key, "an object", v)
        missing = sorted(required - set(v))
        if missing:
            self.fail(key, f"missing entry {missing[0]!r}")
        unknown = sorted(str(k) for k in set(v) - required - optional)
        if unknown:
            self.fail(key, f"unknown keys {unknown[:5]}; known: {sorted(required | optional)}")
        return v

    def int(self, v: Any, key: str, lo: int = 0, hi: int = MAX_INT) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.expect(key, f"an integer in [{lo}, {hi}]", v)
        return v

    def num(self, v: Any, key: str, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> float:
        ok = not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and math.isfinite(v))
        if not ok or not (lo < v if open_lo else lo <= v) or not v <= hi:
            self.expect(key, f"a finite number in {'(' if open_lo else '['}{lo:g}, {hi:g}]", v)
        return float(v)

    def bool(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            self.expect(key, "true or false", v)
        return v

    def str(self, v: Any, key: str, choices: tuple | None = None, max_len: int = 4096) -> str:
        if not isinstance(v, str) or len(v) > max_len or (choices is not None and v not in choices):
            self.expect(key, f"one of {list(choices)}" if choices else "a string", v)
        return v

    def list(self, v: Any, key: str, lo: int, hi: int) -> list:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            self.expect(key, f"a list of {lo}..{hi} entries", v)
        return v


# ---------------------------------------------------------------- networks
_UNET_KEYS = {"channels", "attention_levels", "num_res_blocks", "norm_num_groups", "num_head_channels",
              "in_channels", "out_channels", "spatial_dims", "resblock_updown", "norm_eps"}


def levels(c: Checker, d: dict, key: str, defaults: Any) -> tuple[list, list, list]:
    """channels, attention_levels, num_res_blocks (an int or one per level), checked."""
    ch = c.list(d.get("channels", list(defaults.channels)), f"{key}.channels", 1, MAX_LEVELS)
    for i, w in enumerate(ch):
        c.int(w, f"{key}.channels[{i}]", 1, MAX_WIDTH)
    n = len(ch)
    attn = c.list(d.get("attention_levels", list(defaults.attention_levels)), f"{key}.attention_levels", n, n)
    for i, a in enumerate(attn):
        c.bool(a, f"{key}.attention_levels[{i}]")
    nrb = d.get("num_res_blocks", list(defaults.num_res_blocks))
    if isinstance(nrb, int) and not isinstance(nrb, bool):
        nrb = [nrb] * n
    nrb = c.list(nrb, f"{key}.num_res_blocks", n, n)
    for i, r in enumerate(nrb):
        c.int(r, f"{key}.num_res_blocks[{i}]", 1, 10 ** 9)
    return ch, attn, nrb


def groups(c: Checker, d: dict, key: str, ch: list, default: int) -> int:
    g = c.int(d.get("norm_num_groups", default), f"{key}.norm_num_groups", 1, MAX_WIDTH)
    if any(w % g for w in ch):
        c.fail(f"{key}.norm_num_groups", f"{g} must divide every entry of channels={ch}")
    return g


def unet(c: Checker, d: Any, key: str) -> Any:
    """A ``UNetConfig`` from a checked dict (``MONAI DiffusionModelUNet`` constraints included)."""
    from .networks import UNetConfig

    df = UNetConfig()
    c.obj(d, key, set(), _UNET_KEYS)
    ch, attn, nrb = levels(c, d, key, df)
    g = groups(c, d, key, ch, df.norm_num_groups)
    h = c.int(d.get("num_head_channels", df.num_head_channels), f"{key}.num_head_channels", 1, MAX_WIDTH)
    heads = [w for w, a in zip(ch, attn) if a] + [ch[-1]]  # the middle block always has attention
    if any(w % h for w in heads):
        c.fail(f"{key}.num_head_channels", f"{h} must divide channels[-1]={ch[-1]} and the channels of every "
                                          f"attention level, got channels={ch}")
    return UNetConfig(
        channels=tuple(ch), attention_levels=tuple(attn), num_res_blocks=tuple(nrb), norm_num_groups=g,
        num_head_channels=h,
        in_channels=c.int(d.get("in_channels", df.in_channels), f"{key}.in_channels", 1, 1024),
        out_channels=c.int(d.get("out_channels", df.out_channels), f"{key}.out_channels", 1, 1024),
        spatial_dims=c.int(d.get("spatial_dims", df.spatial_dims), f"{key}.spatial_dims", 2, 3),
        resblock_updown=c.bool(d.get("resblock_updown", df.resblock_updown), f"{key}.resblock_updown"),
        norm_eps=c.num(d.get("norm_eps", df.norm_eps), f"{key}.norm_eps", 0, 1, open_lo=True))


def ddgan_config(c: Checker, d: Any, key: str) -> Any:
    """A ``DDGANConfig`` from a checked dict (``unet``: a U-Net config or a preset name; 2-D only)."""
    from .ddgan_config import DDGANConfig
    from .networks import PRESETS

    df = DDGANConfig()
    c.obj(d, key, set(), set(DDGANConfig.__dataclass_fields__))
    u = d.get("unet", df.unet.to_dict())
    if isinstance(u, str):
        u = PRESETS[c.str(u, f"{key}.unet", tuple(PRESETS))].to_dict()
    net = unet(c, u, f"{key}.unet")
    if net.spatial_dims != 2:
        c.expect(f"{key}.unet.spatial_dims", "2 (the DDGAN discriminator is 2-D)", net.spatial_dims)
    bmin = c.num(d.get("beta_min", df.beta_min), f"{key}.beta_min", 0, 1e4, open_lo=True)
    bmax = c.num(d.get("beta_max", df.beta_max), f"{key}.beta_max", 0, 1e4, open_lo=True)
    if not bmin < bmax:
        c.fail(f"{key}.beta_max", f"expected beta_min < beta_max, got {bmin:g} and {bmax:g}")
    dch = c.list(d.get("d_channels", list(df.d_channels)), f"{key}.d_channels", 1, MAX_LEVELS)
    for i, w in enumerate(dch):
        c.int(w, f"{key}.d_channels[{i}]", 1, MAX_WIDTH)
    return DDGANConfig(
        unet=net, num_steps=c.int(d.get("num_steps", df.num_steps), f"{key}.num_steps", 1, 16),
        beta_min=bmin, beta_max=bmax,
        eps_small=c.num(d.get("eps_small", df.eps_small), f"{key}.eps_small", 0, 1, open_lo=True),
        z_dim=c.int(d.get("z_dim", df.z_dim), f"{key}.z_dim", 1, 4096),
        w_dim=c.int(d.get("w_dim", df.w_dim), f"{key}.w_dim", 1, 4096),
        mapping_layers=c.int(d.get("mapping_layers", df.mapping_layers), f"{key}.mapping_layers", 1, 64),
        d_channels=tuple(dch))


# ---------------------------------------------------------------- schedules, shifts, files, extras
def schedule(c: Checker, d: Any, key: str = "schedule") -> None:
    kind = c.obj(d, key, {"type"}, {"betas", "sigma_min", "sigma_max"})["type"]
    c.str(kind, f"{key}.type", ("vp", "ve"))
    if kind == "vp":
        c.obj(d, key, {"type", "betas"}, set())
        for i, b in enumerate(c.list(d["betas"], f"{key}.betas", 1, MAX_TIMESTEPS)):
            c.num(b, f"{key}.betas[{i}]", 0, 1, open_lo=True)
            if b >= 1:
                c.expect(f"{key}.betas[{i}]", "a number in (0, 1)", b)
    else:
        c.obj(d, key, {"type", "sigma_min", "sigma_max"}, set())
        lo = c.num(d["sigma_min"], f"{key}.sigma_min", 0, 1e8, open_lo=True)
        if not lo < c.num(d["sigma_max"], f"{key}.sigma_max", 0, 1e8, open_lo=True):
            c.fail(f"{key}.sigma_max", f"expected sigma_min < sigma_max, got {d['sigma_min']} and {d['sigma_max']}")


def timestep_shifts(c: Checker, d: Any, key: str = "timestep_shifts") -> None:
    if d is None:
        return
    c.obj(d, key, {"timesteps", "shifts"}, {"solver"})
    ts = c.list(d["timesteps"], f"{key}.timesteps", 0, MAX_TIMESTEPS)
    sh = c.list(d["shifts"], f"{key}.shifts", len(ts), len(ts))
    for i, (t, s) in enumerate(zip(ts, sh)):
        c.int(t, f"{key}.timesteps[{i}]", -1, MAX_TIMESTEPS)
        c.num(s, f"{key}.shifts[{i}]", -MAX_TIMESTEPS, MAX_TIMESTEPS)
    if "solver" in d:
        c.str(d["solver"], f"{key}.solver", max_len=64)


def files(c: Checker, d: Any, required: set[str], optional: set[str]) -> dict[str, str]:
    """``files``: entry name -> a relative path inside the folder (no ``..``, not absolute);
    ``weights_file.confined`` then resolves symlinks against the folder itself."""
    c.obj(d, "files", required, optional)
    for name, path in d.items():
        key = f"files.{name}"
        c.str(path, key, max_len=255)
        parts = path.replace("\\", "/").split("/")
        if not path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":") or ".." in parts \
                or "\x00" in path:
            c.expect(key, "a file name inside the checkpoint folder (relative, no '..')", path)
    return d


def optimizer_meta(c: Checker, d: Any, key: str) -> None:
    """The JSON half of an optimizer state (``checkpoint._optimizer_split``)."""
    c.obj(d, key, {"param_groups", "state"}, set())
    for i, g in enumerate(c.list(d["param_groups"], f"{key}.param_groups", 0, 10_000)):
        c.obj(g, f"{key}.param_groups[{i}]", {"params"}, set(g) if isinstance(g, dict) else set())
        for j, p in enumerate(c.list(g["params"], f"{key}.param_groups[{i}].params", 0, 10 ** 7)):
            c.int(p, f"{key}.param_groups[{i}].params[{j}]", 0, 10 ** 9)
    state = d["state"]
    if not isinstance(state, dict):
        c.expect(f"{key}.state", "an object", state)
    for pid, entry in state.items():
        k = f"{key}.state.{pid}"
        if not pid.isdigit() or not isinstance(entry, dict):
            c.expect(k, "an integer id mapping to an object", entry)
        for name, ref in entry.items():
            if not isinstance(ref, dict) or len(ref) != 1 or not ({"tensor", "value"} & set(ref)):
                c.expect(f"{k}.{name}", "{'tensor': name} or {'value': ...}", ref)
            if "tensor" in ref:
                c.str(ref["tensor"], f"{k}.{name}.tensor", max_len=1024)


def extra(c: Checker, d: Any, key: str = "extra") -> None:
    """Free-form, but the entries loaders read must have their types (HFS process, EMA decay, seed)."""
    if not isinstance(d, dict):
        c.expect(key, "an object", d)
    if "hfs" in d:
        from .hfs_process import REGIONS

        h = c.obj(d["hfs"], f"{key}.hfs", {"type", "acs"}, {"beta_min", "beta_max", "region"})
        c.str(h["type"], f"{key}.hfs.type", ("hfs",))
        c.int(h["acs"], f"{key}.hfs.acs", 1, 1 << 20)
        lo = c.num(h.get("beta_min", 0.1), f"{key}.hfs.beta_min", 0, 1e4, open_lo=True)
        if not lo < c.num(h.get("beta_max", 20.0), f"{key}.hfs.beta_max", 0, 1e4, open_lo=True):
            c.fail(f"{key}.hfs.beta_max", "expected beta_min < beta_max")
        c.str(h.get("region", "lines"), f"{key}.hfs.region", REGIONS)
    if d.get("ema_decay") is not None:  # null: trained without EMA
        c.num(d["ema_decay"], f"{key}.ema_decay", 0, 1)
    if d.get("seed") is not None:
        c.int(d["seed"], f"{key}.seed", -MAX_INT, MAX_INT)


def envelope(c: Checker, cfg: Any, fmt: str, version: int, required: set, optional: set,
             what: str = "checkpoint") -> dict:
    """Format, version, top-level keys, ``step`` and ``extra`` -- shared by the three formats."""
    if not isinstance(cfg, dict):
        c.expect("(top level)", "an object", cfg)
    if cfg.get("format") != fmt:
        c.fail("format", f"not a {what} (format {_show(cfg.get('format'))}, expected {fmt!r})")
    if cfg.get("version") != version or isinstance(cfg.get("version"), bool):
        c.fail("version", f"unsupported checkpoint version {_show(cfg.get('version'))}; this medrecon reads {version}")
    c.obj(cfg, "(top level)", required | {"format", "version"}, optional)
    if "step" in cfg:
        c.int(cfg["step"], "step", 0, MAX_INT)
    extra(c, cfg.get("extra", {}))
    return cfg


# ---------------------------------------------------------------- the three formats
def validate_checkpoint(cfg: Any, file: Any) -> tuple[Any, dict]:
    """Check a ``medrecon-checkpoint`` config; return (``UNetConfig``, files)."""
    from .wrapper import PREDICTION_TYPES

    c = Checker(file)
    envelope(c, cfg, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, {"network", "schedule", "prediction_type", "files"},
             {"step", "timestep_shifts", "extra", "optimizer"}, "medrecon checkpoint")
    c.obj(cfg["network"], "network", {"type", "config"}, set())
    c.str(cfg["network"]["type"], "network.type", ("monai.DiffusionModelUNet",))
    net = unet(c, cfg["network"]["config"], "network.config")
    schedule(c, cfg["schedule"])
    ptype = cfg["prediction_type"]
    if not isinstance(ptype, str) or ptype not in PREDICTION_TYPES:
        c.fail("prediction_type", f"unknown prediction type {_show(ptype)}; expected one of {PREDICTION_TYPES}")
    if ptype == "v" and cfg["schedule"]["type"] != "vp":
        c.fail("prediction_type", "'v' is defined for VP schedules only, the schedule is VE")
    timestep_shifts(c, cfg.get("timestep_shifts"))
    fs = files(c, cfg["files"], {"model"}, {"ema", "optimizer", "rng"})
    if "optimizer" in fs:
        if "optimizer" not in cfg:
            c.fail("optimizer", "files.optimizer is listed but the 'optimizer' entry is missing")
        optimizer_meta(c, cfg["optimizer"], "optimizer")
    return net, fs


def validate_ddgan(cfg: Any, file: Any) -> tuple[Any, dict]:
    """Check a ``medrecon-ddgan`` config; return (``DDGANConfig``, files)."""
    c = Checker(file)
    envelope(c, cfg, DDGAN_FORMAT, DDGAN_VERSION, {"config", "files"}, {"step", "extra", "opt_g", "opt_d"}, "DDGAN checkpoint")
    conf = ddgan_config(c, cfg["config"], "config")
    fs = files(c, cfg["files"], {"generator", "discriminator"}, {"ema", "opt_g", "opt_d"})
    for name in ("opt_g", "opt_d"):
        if name in fs:
            if name not in cfg:
                c.fail(name, f"files.{name} is listed but the {name!r} entry is missing")
            optimizer_meta(c, cfg[name], name)
    return conf, fs
