"""Low-dose CT recipes: ``ct-autoencoder``, ``ct-latent-cold`` and ``ct-pixel-ddpm`` (issue 6).

Data.  Simulated NDCT / LDCT pairs (``medrecon.ct.data.simulate_pairs``, head-CT phantom ->
parallel-beam sinogram over ``3 size / 2`` angles in [0, 180) -> Poisson + electronic noise at
``i0`` / ``sigma_e`` -> FBP in HU, normalised HU / 1000), ``n_train`` slices, ``slices_per_volume``
per volume, volume ``v`` simulated with seed ``v`` (all < 1000: seeds >= 1000 are the held-out
test sets of ``medrecon bench ct``).  ``--data`` is not used.

Networks.  ``ct-autoencoder``: MONAI ``AutoencoderKL`` (``--preset`` an AE preset, default
``small``: channels 32/64/64, 4 latent channels, 4x downsampling), L1 + KL on NDCT and LDCT slices,
frozen, latent scale 1 / std.  ``ct-latent-cold`` / ``ct-pixel-ddpm``: MONAI
``DiffusionModelUNet`` with the same config (``--preset`` a UNet preset name, default ``ct``:
channels 16/32/64/64, one ResNet block per level, no attention in the levels) -- on the latent
(z0 prediction, cold schedule of ``T`` steps, L1) or on pixels (eps prediction, LDCT as a second
input channel, ``--num-train-timesteps`` ``--beta-schedule`` betas).

Output (``--out``).  ``ct-autoencoder`` and ``ct-pixel-ddpm``: the checkpoint directory itself.
``ct-latent-cold``: a run directory holding ``autoencoder/`` (trained there first unless
``--recipe-option autoencoder=DIR`` names a finished one, which is copied in) and ``latent/``;
this directory is what ``medrecon recon --method latent-cold-diffusion -o checkpoint=DIR`` takes.
Every checkpoint's JSON ``extra`` records the recipe, data, steps, final loss, torch threads and
``train_seconds`` (optimisation wall time, summed over continued runs), which ``medrecon bench
ct`` reads for the training-time ratio.

Resume.  The CT fits save weights (and EMA) but no optimiser state: with a checkpoint in
``--out`` of fewer than ``--steps`` steps the run continues from its weights and EMA (AdamW
moments restart; step k still draws batch / t / noise from ``(seed, k)``); one of ``--steps`` or
more is left alone.  ``--no-resume`` refuses an existing checkpoint unless ``--overwrite``, which
retrains from scratch.

Recipe options: ``size`` (128), ``n_train`` (256), ``slices_per_volume`` (4), ``i0`` (1e4),
``sigma_e`` (5), ``T`` (10, cold steps), ``schedule`` (cosine), ``loss`` (l1, cold), ``kl_weight``
(1e-6), ``zoom_fraction`` (0.5: that share of the volumes is magnified 1.1-1.8x, the head cut by
the FOV circle as in zoomed clinical series), ``autoencoder`` (DIR), ``ae_steps`` (1000) and ``ae_preset`` (small), when
ct-latent-cold trains its own, ``ae_lr_min`` (-1: constant learning rate; >= 0: cosine decay to it over
the autoencoder steps of this run) and ``ae_augment`` (0; 1: random 90-degree rotations and flips of
the autoencoder's batches), ``ae_texture`` (0: that share of each autoencoder batch is generic
texture, `medrecon.ct.textures`) and ``ae_crop`` (0: whole slices; else random square windows of
that side), ``ae_l2`` (0: weight of an MSE term beside the autoencoder's L1, `medrecon.ct.autoencoder.ae_loss`),
``texture_pairs`` (0: that many (NDCT, LDCT) pairs made from generic texture, `medrecon.ct.textures.texture_pairs`,
are added to the simulated ones; ct-latent-cold and ct-pixel-ddpm), ``threads`` (torch threads; default unchanged), ``cache`` (a
``.pt`` file the simulated pairs are kept in and re-read from, keyed by the data record).
Defaults: ``--steps`` 1000 (AE) / 3000, ``--batch-size 8``, ``--lr`` 1e-3 (AE) / 5e-4, EMA 0.999
with warm-up (``medrecon.ct.fit``).
Example (the commands behind docs/bench_ct.md)::

    medrecon train --recipe ct-pixel-ddpm --out runs/ct/pixel --recipe-option size=64 \
        --recipe-option threads=1
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from medrecon.ct.data import ZOOM_RANGE
from medrecon.datasets.simulate_ct import BONE_HU

from . import Recipe

__all__ = ["RECIPES", "CT_UNET", "recipe_data", "train_record"]

CT_UNET = {"channels": [16, 32, 64, 64], "attention_levels": [False] * 4,
           "num_res_blocks": [1] * 4, "norm_num_groups": 8, "num_head_channels": 16}

_OPTIONS = {"size": 128, "n_train": 256, "slices_per_volume": 4, "i0": 1e4, "sigma_e": 5.0,
            "T": 10, "schedule": "cosine", "loss": "l1", "kl_weight": 1e-6, "autoencoder": None,
            "ae_steps": 1000, "ae_preset": "small", "threads": 0, "cache": None, "zoom_fraction": 0.5,
            "ae_lr_min": -1.0, "ae_augment": 0, "ae_texture": 0.0, "ae_crop": 0,
            "ae_l2": 0.0, "texture_pairs": 0}
_INTS = ("size", "n_train", "slices_per_volume", "T", "ae_steps", "threads", "ae_augment", "ae_crop",
         "texture_pairs")
_FLOATS = ("i0", "sigma_e", "kl_weight", "zoom_fraction", "ae_lr_min", "ae_texture", "ae_l2")
_VALID = {"ct-autoencoder": ("size", "n_train", "slices_per_volume", "i0", "sigma_e", "kl_weight",
                             "threads", "cache", "zoom_fraction", "ae_lr_min", "ae_augment", "ae_texture",
                             "ae_crop", "ae_l2"),
          "ct-latent-cold": tuple(_OPTIONS),
          "ct-pixel-ddpm": ("size", "n_train", "slices_per_volume", "i0", "sigma_e", "threads", "cache",
                            "zoom_fraction", "texture_pairs")}
_DEFAULTS = {"ct-autoencoder": {"preset": "small", "steps": 1000, "batch_size": 8, "lr": 1e-3},
             "ct-latent-cold": {"preset": "ct", "steps": 3000, "batch_size": 8, "lr": 5e-4},
             "ct-pixel-ddpm": {"preset": "ct", "steps": 3000, "batch_size": 8, "lr": 5e-4}}


def _options(args, recipe: str) -> dict:
    opts = dict(_OPTIONS)
    for key, value in (getattr(args, "recipe_options", None) or {}).items():
        if key not in _VALID[recipe]:
            raise ValueError(f"--recipe-option {key}: unknown for recipe {recipe!r}; valid: "
                             f"{sorted(_VALID[recipe])}")
        try:
            opts[key] = int(value) if key in _INTS else float(value) if key in _FLOATS else value
        except ValueError:
            kind = "an integer" if key in _INTS else "a number"
            raise ValueError(f"--recipe-option {key}={value!r}: expected {kind}") from None
    for key in ("size", "n_train", "slices_per_volume", "T", "ae_steps"):
        if opts[key] < 1:
            raise ValueError(f"--recipe-option {key}: expected a positive integer, got {opts[key]}")
    if opts["size"] % 8 or opts["size"] < 16:
        raise ValueError(f"--recipe-option size: expected a multiple of 8 that is >= 16, got {opts['size']}")
    if -(-opts["n_train"] // opts["slices_per_volume"]) > 1000:
        raise ValueError("--recipe-option n_train / slices_per_volume: more than 1000 volumes would "
                         "reach the held-out simulator seeds (>= 1000)")
    if opts["ae_augment"] not in (0, 1):
        raise ValueError(f"--recipe-option ae_augment: expected 0 or 1, got {opts['ae_augment']}")
    if opts["ae_crop"] < 0 or opts["ae_crop"] > opts["size"]:
        raise ValueError(f"--recipe-option ae_crop: expected 0 (whole slices) or a side <= size "
                         f"{opts['size']}, got {opts['ae_crop']}")
    if opts["texture_pairs"] < 0:
        raise ValueError(f"--recipe-option texture_pairs: expected >= 0, got {opts['texture_pairs']}")
    if opts["ae_l2"] < 0:
        raise ValueError(f"--recipe-option ae_l2: expected >= 0, got {opts['ae_l2']}")
    if not 0.0 <= opts["ae_texture"] <= 1.0:
        raise ValueError(f"--recipe-option ae_texture: expected a fraction in [0, 1], got {opts['ae_texture']}")
    if not opts["i0"] > 0 or opts["sigma_e"] < 0:
        raise ValueError(f"--recipe-option i0 must be > 0 and sigma_e >= 0, got {opts['i0']}, "
                         f"{opts['sigma_e']}")
    return opts


def _generic(args, recipe: str) -> dict:
    d = dict(_DEFAULTS[recipe])
    for key in d:
        if getattr(args, key, None) is not None:
            d[key] = getattr(args, key)
    d["ema_decay"] = getattr(args, "ema_decay", 0.999) or None
    d["grad_clip"] = getattr(args, "grad_clip", 1.0) or None
    d["seed"] = int(getattr(args, "seed", 0) or 0)
    d["device"] = getattr(args, "device", None) or "cpu"
    d["progress"] = not getattr(args, "quiet", False)
    return d


def recipe_data(opts: dict) -> dict:
    """The JSON record of the simulated training data (seed 0: volume seeds 0 .. n_volumes - 1)."""
    return {"simulator": "medrecon.ct.data.simulate_pairs", "seed": 0, "size": opts["size"],
            "n_train": opts["n_train"], "slices_per_volume": opts["slices_per_volume"],
            "i0": opts["i0"], "sigma_e": opts["sigma_e"], "target": "fbp",
            "n_angles": 3 * opts["size"] // 2, "bone_hu": list(BONE_HU),
            "zoom_fraction": opts["zoom_fraction"], "zoom_range": list(ZOOM_RANGE),
            **({"texture_pairs": opts["texture_pairs"], "texture_seed": 0}
               if opts.get("texture_pairs") else {})}


def _simulate(opts: dict):
    """The training pairs: the simulated ones (`_simulate_heads`), then ``texture_pairs`` pairs made
    from generic texture (`medrecon.ct.textures.texture_pairs`, seed 0; not cached: seconds)."""
    ds = _simulate_heads(opts)
    n = int(opts.get("texture_pairs") or 0)
    if not n:
        return ds
    import torch

    from medrecon.ct.data import CTPairDataset
    from medrecon.ct.textures import texture_pairs

    t = texture_pairs(n, opts["size"], seed=0, i0=opts["i0"], sigma_e=opts["sigma_e"])
    return CTPairDataset(ndct=torch.cat([ds.ndct, t["ndct"]]), ldct=torch.cat([ds.ldct, t["ldct"]]))


def _simulate_heads(opts: dict):
    """The simulated head pairs; with ``cache=FILE.pt`` they are read from / written to that file
    (tensors only: ``torch.load(weights_only=True)``), keyed by their data record."""
    import torch

    from medrecon.ct.data import CTPairDataset

    record = json.dumps(recipe_data({**opts, "texture_pairs": 0}), sort_keys=True)
    cache = Path(opts["cache"]) if opts.get("cache") else None
    if cache is not None and cache.is_file():
        d = torch.load(cache, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or set(d) != {"ndct", "ldct", "record"}:
            raise ValueError(f"--recipe-option cache={cache}: not a CT recipe data cache")
        if bytes(d["record"].tolist()).decode() != record:
            raise ValueError(f"--recipe-option cache={cache}: holds other data "
                             f"({bytes(d['record'].tolist()).decode()}); use another file")
        return CTPairDataset(ndct=d["ndct"], ldct=d["ldct"])
    ds = CTPairDataset(opts["n_train"], opts["size"], i0=opts["i0"], sigma_e=opts["sigma_e"],
                       seed=0, slices_per_volume=opts["slices_per_volume"], zoom_fraction=opts["zoom_fraction"])
    if cache is not None:
        import os

        cache.parent.mkdir(parents=True, exist_ok=True)
        rec = torch.tensor(list(record.encode()), dtype=torch.uint8)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        torch.save({"ndct": ds.ndct, "ldct": ds.ldct, "record": rec}, tmp)
        os.replace(tmp, cache)
    return ds


def train_record(recipe: str, opts: dict, g: dict, steps_total: int, seconds: float,
                 losses: list[float], previous: dict | None = None, **more) -> dict:
    """The ``extra`` stored with a CT checkpoint (``train_seconds`` summed over continued runs)."""
    import torch

    prev_s = float((previous or {}).get("train_seconds", 0.0))
    tail = losses[-50:]
    return {"recipe": recipe, "data": recipe_data(opts), "steps": int(steps_total),
            "batch_size": g["batch_size"], "lr": g["lr"], "seed": g["seed"],
            "ema_decay": g["ema_decay"], "device": str(g["device"]),
            "torch_threads": torch.get_num_threads(),
            "train_seconds": prev_s + float(seconds),
            "s_per_step": float(seconds) / max(1, len(losses)),
            "final_loss": float(sum(tail) / len(tail)) if tail else None, **more}


def _existing_step(directory: Path, kind_reader) -> tuple[int, dict] | None:
    if not (directory / "config.json").is_file():
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(f"--out: {directory} exists and is not a checkpoint directory")
        return None
    return kind_reader(directory)


def _ct_reader(kind: str):
    def read(directory: Path) -> tuple[int, dict]:
        from medrecon.ct.checkpoint import read_ct_checkpoint

        cfg, _ = read_ct_checkpoint(directory, kind)
        return int(cfg.get("step", 0)), cfg.get("extra", {})
    return read


def _pixel_reader(directory: Path) -> tuple[int, dict]:
    cfg = json.loads((directory / "config.json").read_text())
    return int(cfg.get("step", 0)), cfg.get("extra", {})


def _plan(out: Path, reader, steps: int, args, opts: dict, name: str):
    """``None`` (nothing to do), ``(0, {})`` (fresh) or ``(step, extra)`` (continue)."""
    found = _existing_step(out, reader)
    if found is None:
        return 0, {}
    if getattr(args, "no_resume", False):
        if not getattr(args, "overwrite", False):
            raise FileExistsError(f"{out}: {name} checkpoint already exists (--no-resume refuses to "
                                  "replace it without --overwrite)")
        return 0, {}
    step, extra = found
    old = extra.get("data", {})
    for key in ("size", "i0", "sigma_e", "n_train"):
        if key in old and old[key] != recipe_data(opts)[key]:
            raise ValueError(f"{out}: the checkpoint was trained with {key}={old[key]}, this run asks "
                             f"for {recipe_data(opts)[key]}; use another --out or --no-resume --overwrite")
    if step >= steps:
        print(f"{out}: {name} already trained for {step} steps (>= --steps {steps}); nothing to do")
        return None
    return step, extra


def _resume(out: Path, reader, steps: int, args, opts: dict, name: str, load):
    """`_plan`, and when continuing ``load(out)`` -> (the model with its training weights, its EMA
    state): ``None`` (nothing to do) or ``(start, extra, model or None, ema or None)``."""
    plan = _plan(out, reader, steps, args, opts, name)
    if plan is None:
        return None
    start, prev = plan
    model, ema = load(out) if start else (None, None)
    return start, prev, model, ema


def _threads(opts: dict) -> None:
    if opts["threads"]:
        import torch

        torch.set_num_threads(opts["threads"])


def _train_autoencoder(out: Path, args, opts: dict, g: dict, data=None, steps: int | None = None,
                       recipe: str = "ct-autoencoder") -> int:
    from medrecon.ct.autoencoder import AE_KIND, load_autoencoder, train_autoencoder

    steps = g["steps"] if steps is None else steps
    plan = _plan(out, _ct_reader(AE_KIND), steps, args, opts, "autoencoder")
    if plan is None:
        return 0
    start, prev = plan
    model = g["preset"] if start == 0 else load_autoencoder(out, g["device"])
    data = _simulate(opts) if data is None else data
    res = train_autoencoder(model, data, steps=steps - start, batch_size=g["batch_size"], lr=g["lr"],
                            kl_weight=opts["kl_weight"], grad_clip=g["grad_clip"], seed=g["seed"],
                            device=g["device"], progress=g["progress"], start_step=start,
                            lr_min=opts["ae_lr_min"] if opts["ae_lr_min"] >= 0 else None,
                            augment=bool(opts["ae_augment"]), texture_fraction=opts["ae_texture"],
                            crop=opts["ae_crop"] or None, l2_weight=opts["ae_l2"])
    from medrecon.ct.autoencoder import save_autoencoder

    extra = train_record(recipe, opts, g, steps, res.seconds, res.losses, prev,
                         preset=g["preset"], kl_weight=opts["kl_weight"],
                         lr_min=opts["ae_lr_min"] if opts["ae_lr_min"] >= 0 else None,
                         augment=bool(opts["ae_augment"]), texture_fraction=opts["ae_texture"],
                         crop=opts["ae_crop"] or None, l2_weight=opts["ae_l2"])
    save_autoencoder(out, res.autoencoder, step=steps, overwrite=True, extra=extra)
    print(f"autoencoder: {steps} steps, {res.seconds:.1f} s, final L1+KL {extra['final_loss']:.4f} -> {out}")
    return 0


def _run_autoencoder(args) -> int:
    opts = _options(args, "ct-autoencoder")
    _threads(opts)
    return _train_autoencoder(Path(args.out), args, opts, _generic(args, "ct-autoencoder"))


def _run_latent(args) -> int:
    from medrecon.ct.autoencoder import load_autoencoder
    from medrecon.ct.checkpoint import read_ct_checkpoint
    from medrecon.ct.cold_diffusion import COLD_KIND, load_cold_diffusion, train_cold_diffusion, save_cold_diffusion

    opts = _options(args, "ct-latent-cold")
    _threads(opts)
    g = _generic(args, "ct-latent-cold")
    out = Path(args.out)
    ae_dir, lat_dir = out / "autoencoder", out / "latent"
    data = None
    if opts["autoencoder"]:
        src = Path(opts["autoencoder"])
        load_autoencoder(src)  # validates before anything is copied
        if src.resolve() != ae_dir.resolve():
            if ae_dir.exists() and not getattr(args, "overwrite", False) and \
                    (ae_dir / "config.json").read_bytes() != (src / "config.json").read_bytes():
                raise FileExistsError(f"{ae_dir}: holds another autoencoder; pass --overwrite to replace it")
            tmp = out / ".autoencoder.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(ae_dir, ignore_errors=True)
            tmp.rename(ae_dir)
    else:
        ae_g = {**_generic(args, "ct-autoencoder"), "steps": opts["ae_steps"]}
        ae_g["preset"] = opts["ae_preset"]
        data = _simulate(opts)
        _train_autoencoder(ae_dir, args, opts, ae_g, data, opts["ae_steps"])
    ae = load_autoencoder(ae_dir, g["device"])
    ae_extra = read_ct_checkpoint(ae_dir, "ct-autoencoder-kl")[0].get("extra", {})
    if ae_extra.get("data", {}).get("size", opts["size"]) != opts["size"]:
        raise ValueError(f"{ae_dir}: autoencoder trained at size {ae_extra['data']['size']}, this run "
                         f"uses size={opts['size']}")
    plan = _resume(lat_dir, _ct_reader(COLD_KIND), g["steps"], args, opts, "latent network",
                   lambda d: (load_cold_diffusion(d, g["device"], use_ema=False),
                              read_ct_checkpoint(d, COLD_KIND)[1].get("ema")))
    if plan is None:
        return 0
    start, prev, model, ema = plan
    if not start:
        c = ae.latent_channels
        model = dict(CT_UNET, in_channels=c, out_channels=c) if g["preset"] == "ct" else g["preset"]
    data = _simulate(opts) if data is None else data
    res = train_cold_diffusion(model, ae, data, T=opts["T"], schedule=opts["schedule"],
                               steps=g["steps"] - start, batch_size=g["batch_size"], lr=g["lr"],
                               loss=opts["loss"], ema_decay=g["ema_decay"], grad_clip=g["grad_clip"],
                               seed=g["seed"], device=g["device"], progress=g["progress"],
                               start_step=start, ema_state=ema)
    extra = train_record("ct-latent-cold", opts, g, g["steps"], res.seconds, res.losses, prev,
                         encode_seconds=res.encode_seconds, T=opts["T"], schedule=opts["schedule"],
                         loss=opts["loss"], preset=g["preset"],
                         autoencoder={"train_seconds": ae_extra.get("train_seconds"),
                                      "steps": ae_extra.get("steps"),
                                      "s_per_step": ae_extra.get("s_per_step")})
    save_cold_diffusion(lat_dir, res.model, ema=res.ema.shadow if res.ema else None, step=g["steps"],
                        overwrite=True, extra=extra)
    print(f"latent cold diffusion: {g['steps']} steps, {res.seconds:.1f} s (+ encode "
          f"{res.encode_seconds:.1f} s), final loss {extra['final_loss']:.4f} -> {out}")
    return 0


def _run_pixel(args) -> int:
    from medrecon.ct.pixel_ddpm import build_pixel_ddpm, load_pixel_ddpm, save_pixel_ddpm, train_pixel_ddpm
    from medrecon.models.checkpoint import load_checkpoint
    from medrecon.models.schedules import make_betas

    opts = _options(args, "ct-pixel-ddpm")
    _threads(opts)
    g = _generic(args, "ct-pixel-ddpm")
    out = Path(args.out)
    plan = _resume(out, _pixel_reader, g["steps"], args, opts, "pixel DDPM",
                   lambda d: (load_pixel_ddpm(d, g["device"], use_ema=False), load_checkpoint(d).ema))
    if plan is None:
        return 0
    start, prev, model, ema = plan
    if not start:
        n = getattr(args, "num_train_timesteps", None) or 1000
        betas = make_betas(getattr(args, "beta_schedule", None) or "linear", n)
        model = build_pixel_ddpm(dict(CT_UNET, in_channels=2, out_channels=1) if g["preset"] == "ct"
                                 else g["preset"], betas, seed=g["seed"])
    res = train_pixel_ddpm(model, _simulate(opts), steps=g["steps"] - start, batch_size=g["batch_size"],
                           lr=g["lr"], ema_decay=g["ema_decay"], grad_clip=g["grad_clip"], seed=g["seed"],
                           device=g["device"], progress=g["progress"], start_step=start, ema_state=ema)
    extra = train_record("ct-pixel-ddpm", opts, g, g["steps"], res.seconds, res.losses, prev,
                         preset=g["preset"])
    save_pixel_ddpm(out, res.model, ema=res.ema.shadow if res.ema else None, step=g["steps"],
                    overwrite=True, extra=extra)
    print(f"pixel DDPM: {g['steps']} steps, {res.seconds:.1f} s, final loss {extra['final_loss']:.4f} -> {out}")
    return 0


RECIPES = {
    "ct-autoencoder": Recipe("ct-autoencoder", _run_autoencoder,
                             "MONAI AutoencoderKL on simulated NDCT/LDCT slices (latent cold diffusion's E/D)"),
    "ct-latent-cold": Recipe("ct-latent-cold", _run_latent,
                             "latent cold diffusion z0-network (trains or copies the autoencoder first)"),
    "ct-pixel-ddpm": Recipe("ct-pixel-ddpm", _run_pixel,
                            "pixel-space conditional DDPM denoiser (LDCT as condition), the baseline"),
}
