"""``distill`` recipe: progressive distillation (Salimans & Ho, ICLR 2022, Alg. 2) of a VP prior into a
few-step student for dds / ddnm / diffpir / ccdf (``medrecon.models.distill``; docs/distill.md).

    medrecon train --recipe distill --teacher brain128-vp --target-steps 4 --out runs/brain128-vp-4 \\
        [--steps-per-round 2000] [--batch-size 8] [--lr 5e-5] [--recipe-option teacher_steps=64]

``--teacher``: a shipped prior name or a checkpoint directory (its EMA weights when saved), VP eps / x0 / v.
``--target-steps`` K (>= 2): the student samples on ``ddim_dc.grid(K, T)``; rounds halve N = ``teacher_steps``
(default 2K doubled up to >= 64) down to K.  ``--steps-per-round``: training steps of each round (default
2000).  Data: the MRI recipes' training set (``cli/recipes/mri.py``: the simulated brain windows, or
``--data`` a tensor file / fastMRI folder, or with ``scales=1`` the multi-scale data and its
``multiscale.pt``), options ``volumes``, ``slices``, ``data_seed``, ``size``, ``scales``, ``threads`` as
there; plus ``teacher_steps`` (0: the default) and ``val_items`` (8: held-out items, the last of the data
set).  Defaults: ``--batch-size 8 --lr 5e-5`` (ours, not the paper's); ``--ema-decay`` as given (short
rounds want 0.99 or 0).  The network, schedule and objective come from the teacher: ``--preset``,
``--objective``, ``--init`` and ``--steps`` are refused.  A rerun resumes (finished rounds skipped).
"""
from __future__ import annotations

import argparse

from . import Recipe

_DEFAULTS = {"steps_per_round": 2000, "batch_size": 8, "lr": 5e-5}
_OWN = {"teacher_steps": 0, "val_items": 8}
_DATA = ("volumes", "slices", "data_seed", "size", "scales", "threads")  # cli/recipes/mri.py's options


def _options(args) -> tuple[dict[str, int], dict[str, str]]:
    own, data = dict(_OWN), {}
    for key, value in (args.recipe_options or {}).items():
        if key in _OWN:
            try:
                own[key] = int(value)
            except ValueError:
                raise ValueError(f"--recipe-option {key}={value!r}: expected an integer") from None
        elif key in _DATA:
            data[key] = value
        else:
            raise ValueError(f"--recipe-option {key}: unknown for recipe 'distill'; valid: {sorted([*_OWN, *_DATA])}")
    if own["teacher_steps"] < 0 or own["val_items"] < 1:
        raise ValueError(f"--recipe-option teacher_steps >= 0, val_items >= 1 expected, got {own}")
    return own, data


def _teacher(name: str, device, flag: str = "--teacher"):
    """(model, its name or path) of ``--teacher`` (or ``flag``), EMA weights when saved."""
    from medrecon.builtin_priors import BUILTIN_PRIORS, resolve_checkpoint
    from medrecon.models.checkpoint import load_model

    path = resolve_checkpoint(name, "")
    if not (path / "config.json").is_file():
        raise ValueError(f"{flag} {name!r}: neither a shipped prior ({', '.join(BUILTIN_PRIORS)}) nor a "
                         f"checkpoint directory (config.json + model.safetensors)")
    return load_model(path, map_location=device or "cpu"), name if name in BUILTIN_PRIORS else str(path)


def prepare(args, recipe: str, refused: tuple, length: str, options, defaults: dict):
    """What both distillation recipes do first: check ``--teacher`` and ``--target-steps`` given, the
    ``refused`` flags absent, float32; parse ``options(args) -> (own, data options)``; set the torch
    threads and the flags' ``defaults``; load the teacher.  ``(own, data options, teacher, its name)``."""
    import torch

    from .mri import _options as mri_options

    if args.teacher is None or args.target_steps is None:
        raise ValueError(f"--recipe {recipe} needs --teacher NAME|DIR and --target-steps K")
    for flag in refused:
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: recipe {recipe} takes the network, schedule and objective "
                             f"from --teacher (training length: {length})")
    if args.mixed_precision != "no":
        raise ValueError(f"--mixed-precision: recipe {recipe} trains in float32")
    own, data = options(args)
    opts = mri_options(argparse.Namespace(recipe_options=data), "vp")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return (own, opts, *_teacher(args.teacher, args.device))


def _run(args) -> int:
    from medrecon.models.distill import distill

    from .mri import _load

    own, opts, teacher, name = prepare(args, "distill", ("preset", "objective", "init", "steps"), "--steps-per-round",
                                       _options, _DEFAULTS)
    factor = teacher.network_config.downsample_factor
    if opts["size"] % factor:
        raise ValueError(f"--recipe-option size={opts['size']} must be divisible by {factor} for the teacher's network")
    result = distill(
        teacher, _load(args, opts), args.out, target_steps=args.target_steps, teacher_steps=own["teacher_steps"] or None,
        steps_per_round=args.steps_per_round, batch_size=args.batch_size, lr=args.lr,
        ema_decay=args.ema_decay or None, grad_clip=args.grad_clip or None, val_items=own["val_items"],
        save_every=args.save_every or None, teacher_name=name, seed=args.seed, device=args.device,
        resume=not args.no_resume, overwrite=args.overwrite, progress=not args.quiet)
    for r in result.rounds:
        print(f"round {r['round']}: {r['teacher_steps']} -> {r['steps']} steps, held-out MSE against the teacher "
              f"{r['heldout_mse_before']:.3g} -> {r['heldout_mse']:.3g}")
    print(f"recipe distill: student {result.checkpoint} (steps={len(result.grid) - 1}, grid {result.grid})")
    return 0


RECIPES = {
    "distill": Recipe("distill", _run, "progressive distillation of a VP prior (--teacher) into a "
                                       "--target-steps DDIM student (Salimans & Ho 2022)"),
}
