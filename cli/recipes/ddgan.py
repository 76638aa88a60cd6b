"""DDGAN recipe (``medrecon train --recipe ddgan``): the FDMR generator prior on the simulated brain.

Data: exactly the MRI prior recipes' training set (``medrecon.cli.recipes.mri``): simulated
multi-coil brain volumes (simulator seed ``data_seed`` < 1000), ESPIRiT SENSE-combined complex
images over the encoded field of view, each divided by its zero-filled maximum under a fastMRI
4x/8x mask (the ``normalize=True`` scale of the posterior methods, FDMR included), served as
``size`` x ``size`` windows (default 128x128); ``--data`` takes any ``medrecon train --data`` source.

Model (``medrecon.models.ddgan``): generator = MONAI UNet (preset ``brain128`` unless
``--preset``) with AdaGN(z), discriminator ``d_channels`` (default 16,32,64,64,64), T = ``T``
steps on the VP schedule.  Training (``medrecon.models.ddgan_train``): non-saturating loss,
R1 (``r1_gamma``, every ``lazy_reg`` steps), ``lambda_rec`` L1 on x0, EMA ``--ema-decay``.

Recipe options (``--recipe-option KEY=VALUE``): ``volumes`` (48), ``slices`` (4), ``data_seed`` (0),
``size`` (128), ``threads`` (0 = unchanged), ``T`` (4), ``z_dim`` (32), ``lambda_rec`` (1.0),
``r1_gamma`` (0.05), ``lazy_reg`` (4), ``lr_d`` (2e-4), ``max_minutes`` (0 = no limit; stops and
checkpoints when the wall-clock budget is spent; running the command again resumes), ``scales``
(1: the MRI recipes' multi-scale data, recon matrices 128..384, ``cli/recipes/mri_scales.py``;
``--data`` then takes its ``multiscale.pt``).
Defaults: ``--steps 3000 --batch-size 8 --lr 3e-4`` (generator).  Example::

    medrecon train --recipe ddgan --out runs/ddgan128 --save-every 100 \
        --recipe-option threads=1 --recipe-option max_minutes=38
"""
from __future__ import annotations

from pathlib import Path

from . import Recipe

__all__ = ["RECIPES", "ddgan_config"]

_DEFAULTS = {"preset": "brain128", "steps": 3000, "batch_size": 8, "lr": 3e-4}
_OPTIONS: dict[str, tuple[type, float]] = {
    "volumes": (int, 48), "slices": (int, 4), "data_seed": (int, 0), "size": (int, 128), "threads": (int, 0),
    "T": (int, 4), "z_dim": (int, 32), "lambda_rec": (float, 1.0), "r1_gamma": (float, 0.05),
    "lazy_reg": (int, 4), "lr_d": (float, 2e-4), "max_minutes": (float, 0.0), "scales": (int, 0),
}


def _options(args) -> dict:
    opts = {k: t(v) for k, (t, v) in _OPTIONS.items()}
    for key, value in (args.recipe_options or {}).items():
        if key not in _OPTIONS:
            raise ValueError(f"--recipe-option {key}: unknown for recipe 'ddgan'; valid: {sorted(_OPTIONS)}")
        typ = _OPTIONS[key][0]
        try:
            opts[key] = typ(value)
        except ValueError:
            raise ValueError(f"--recipe-option {key}={value!r}: expected {typ.__name__}") from None
    for key in ("volumes", "slices", "size", "z_dim", "lazy_reg"):
        if opts[key] < 1:
            raise ValueError(f"--recipe-option {key}: expected a positive integer, got {opts[key]}")
    if not 2 <= opts["T"] <= 8:
        raise ValueError(f"--recipe-option T: DDGAN uses 2..8 large steps, got {opts['T']}")
    if not 0 <= opts["data_seed"] < 1000:
        raise ValueError(f"--recipe-option data_seed: training data uses simulator seeds 0..999 "
                         f"(>= 1000 are held-out test sets), got {opts['data_seed']}")
    for key in ("lambda_rec", "r1_gamma", "max_minutes"):
        if opts[key] < 0:
            raise ValueError(f"--recipe-option {key}: expected >= 0, got {opts[key]}")
    if opts["scales"] not in (0, 1):
        raise ValueError(f"--recipe-option scales: expected 0 or 1, got {opts['scales']}")
    if opts["lr_d"] <= 0:
        raise ValueError(f"--recipe-option lr_d: expected > 0, got {opts['lr_d']}")
    return opts


def ddgan_config(preset_name: str = "brain128", T: int = 4, z_dim: int = 32,
                 d_channels: tuple[int, ...] = (16, 32, 64, 64, 64)):
    """The recipe's ``DDGANConfig`` (generator U-Net from a ``medrecon.models.networks`` preset)."""
    from medrecon.models.ddgan import DDGANConfig
    from medrecon.models.networks import preset

    return DDGANConfig(unet=preset(preset_name), num_steps=T, z_dim=z_dim, d_channels=d_channels)


def _run(args) -> int:
    import torch

    from medrecon.cli.recipes.mri import _load
    from medrecon.models.ddgan_train import train_ddgan

    opts = _options(args)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    for key, value in _DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if getattr(args, "objective", None) is not None:
        raise ValueError("--objective: recipe 'ddgan' trains a GAN generator, not a diffusion objective")
    cfg = ddgan_config(args.preset, opts["T"], opts["z_dim"])
    if opts["size"] % cfg.unet.downsample_factor:
        raise ValueError(f"--recipe-option size={opts['size']} must be divisible by "
                         f"{cfg.unet.downsample_factor} for preset {args.preset!r}")
    dataset = _load(args, opts)
    result = train_ddgan(
        cfg, dataset, Path(args.out), steps=args.steps, batch_size=args.batch_size, lr_g=args.lr,
        lr_d=opts["lr_d"], r1_gamma=opts["r1_gamma"], lazy_reg=opts["lazy_reg"], lambda_rec=opts["lambda_rec"],
        ema_decay=args.ema_decay or None, save_every=args.save_every or None,
        max_minutes=opts["max_minutes"] or None, resume=not args.no_resume, overwrite=args.overwrite,
        seed=args.seed, device=args.device, progress=not args.quiet,
        extra={"recipe": "ddgan", "data": str(args.data) if args.data else "simulated", **opts},
    )
    last = result.log[-1] if result.log else None
    what = (f"d {last['d_loss']:.4f}  g {last['g_adv']:.4f}  l1 {last['l1_x0']:.4f}" if last
            else "n/a (already trained)")
    print(f"recipe ddgan: step {result.step}  {what}  checkpoint {result.checkpoint}")
    return 0


RECIPES = {
    "ddgan": Recipe("ddgan", _run, "denoising diffusion GAN generator (FDMR's prior) on the simulated brain "
                                   "(128x128, T=4, preset brain128)"),
}
