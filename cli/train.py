"""`medrecon train`: train a diffusion prior on a stack of images (thin shell over
``medrecon.models.train.train``).

Data (``--data``):

- a tensor file: ``.pt`` (read with ``torch.load(weights_only=True)``: tensors only, no code),
  ``.npy`` (``allow_pickle=False``), ``.h5``/``.hdf5`` (dataset ``--key``, default the first
  one), holding complex images ``[N, H, W]`` or real ``[N, 2, H, W]`` (real/imag channels) /
  ``[N, H, W]`` real magnitudes (trained as complex with zero imaginary part);
- a directory of fastMRI HDF5 files: read with ``medrecon.datasets.image_dataset.ImageDataset(DIR,
  mode="complex")`` (SENSE-combined complex images, normalized by their 99th magnitude percentile;
  ``--normalize`` applies to tensor files only).

``--normalize max`` (default) divides every image by its largest magnitude, so the data sit in
the unit disc that the default noise schedules assume.

Examples::

    medrecon train --data knee.npy --out runs/tiny --preset tiny --objective eps --steps 2000
    torchrun --nproc_per_node=4 -m medrecon.cli.main train --data DIR --out runs/small \
        --preset small --steps 100000 --batch-size 16 --mixed-precision bf16

A run resumes from the last checkpoint in ``--out`` unless ``--no-resume`` (which refuses to
touch existing checkpoints without ``--overwrite``).  Samples (DDIM via ``medrecon.sample``)
are written as PNG rows every ``--sample-every`` steps for VP objectives.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def load_images(path: str | Path, key: str | None = None, normalize: str = "max") -> torch.utils.data.Dataset:
    """A dataset of complex64 images [H, W] from a tensor file or an image directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data: {path} does not exist")
    if path.is_dir():
        from medrecon.datasets.image_dataset import ImageDataset

        ds = ImageDataset(path, mode="complex")  # fastMRI HDF5 files: SENSE-combined complex images
        if len(ds) == 0:
            raise ValueError(f"--data: {path} holds no readable fastMRI HDF5 slices")
        return ds
    suffix = path.suffix.lower()
    if suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)
        if not torch.is_tensor(x):
            raise ValueError(f"--data: {path} must hold a single tensor, got {type(x).__name__}")
    elif suffix == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            name = key or (names[0] if names else None)
            if name is None or name not in f:
                raise ValueError(f"--key: {path} has no dataset {name!r}; it holds {names}")
            x = torch.from_numpy(np.asarray(f[name]))
    else:
        raise ValueError(f"--data: expected a directory or a .pt/.npy/.h5 file, got {path.name}")
    if x.is_complex() and x.ndim == 3:
        x = x.to(torch.complex64)
    elif not x.is_complex() and x.ndim == 4 and x.shape[1] == 2:
        x = torch.view_as_complex(x.float().permute(0, 2, 3, 1).contiguous())
    elif not x.is_complex() and x.ndim == 3:
        x = x.float().to(torch.complex64)
    else:
        raise ValueError(f"--data: expected images [N, H, W] (complex or real) or [N, 2, H, W], "
                         f"got {x.dtype} {tuple(x.shape)} in {path}")
    if normalize == "max":
        x = x / x.abs().flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    elif normalize != "none":
        raise ValueError(f"--normalize: expected 'max' or 'none', got {normalize!r}")
    return _Images(x)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a diffusion prior (MONAI U-Net) on images",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=None,
                   help="a training recipe (data, network and schedule chosen together; see "
                        "medrecon.cli.recipes), e.g. vp, hfs, ddgan, ct-latent-cold")
    p.add_argument("--recipe-option", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe-specific setting, repeatable")
    p.add_argument("--data", default=None, help="image directory or .pt/.npy/.h5 file [N,H,W] / [N,2,H,W] "
                   "(required without --recipe; recipes that simulate their data make it optional)")
    p.add_argument("--key", default=None, help="HDF5 dataset name (default: the first)")
    p.add_argument("--normalize", default="max", choices=["max", "none"])
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, samples)")
    p.add_argument("--preset", default=None, help="network preset: tiny | small (default tiny)")
    p.add_argument("--objective", default=None, choices=["eps", "v", "score"],
                   help="eps / v (VP, DDPM linear betas) or score (VE denoising score matching); default eps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=0.999, help="0 disables the EMA")
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="CUDA only")
    p.add_argument("--num-train-timesteps", type=int, default=1000, help="VP: number of betas")
    p.add_argument("--beta-schedule", default="linear", help="VP: make_betas kind")
    p.add_argument("--sigma-min", type=float, default=0.01, help="VE only")
    p.add_argument("--sigma-max", type=float, default=50.0, help="VE only")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--sample-every", type=int, default=0, help="PNG of DDIM samples every N steps (VP)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start a new run from these weights (a checkpoint or builtin prior name): fine-tuning")
    p.add_argument("--teacher", default=None, metavar="NAME|DIR",
                   help="recipes distill, distill-chain: the prior to distil (a builtin prior name or a checkpoint)")
    p.add_argument("--target-steps", type=int, default=None, metavar="K",
                   help="recipes distill, distill-chain: the student's sampler steps (distill: rounds halve the teacher's down to K)")
    p.add_argument("--steps-per-round", type=int, default=None, help="recipe distill: training steps per round")
    p.add_argument("--no-resume", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--overwrite", action="store_true", help="with --no-resume: replace existing checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


_GENERIC_DEFAULTS = {"preset": "tiny", "objective": "eps", "steps": 1000, "batch_size": 8, "lr": 2e-4}


def _recipe_options(pairs: list[str]) -> dict[str, str]:
    from medrecon.options import parse_pairs

    return parse_pairs(pairs, "--recipe-option")


_DISTILL_FLAGS = {"teacher": ("distill", "distill-chain"), "target_steps": ("distill", "distill-chain"),
                  "steps_per_round": ("distill",)}  # flag -> the recipes that use it


def _run(args) -> int:
    args.recipe_options = _recipe_options(args.recipe_option)
    for flag, recipes in _DISTILL_FLAGS.items():
        if getattr(args, flag) is not None and args.recipe not in recipes:
            raise ValueError(f"--{flag.replace('_', '-')}: used by --recipe {' / '.join(recipes)} only")
    if args.recipe is not None:
        from medrecon.cli.recipes import get_recipe

        return int(get_recipe(args.recipe).run(args) or 0)
    if args.recipe_options:
        raise ValueError("--recipe-option needs --recipe")
    if args.data is None:
        raise ValueError("--data is required without --recipe")
    for key, value in _GENERIC_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from medrecon.builtin_priors import resolve_checkpoint
    from medrecon.models.networks import preset
    from medrecon.models.schedules import VE, VPSchedule, make_betas
    from medrecon.models.train import train

    cfg = preset(args.preset)
    dataset = load_images(args.data, args.key, args.normalize)
    h, w = torch.as_tensor(dataset[0]).shape[-2:]
    if h % cfg.downsample_factor or w % cfg.downsample_factor:
        raise ValueError(f"--data: image size {h}x{w} must be divisible by {cfg.downsample_factor} "
                         f"for preset {args.preset!r}")
    if args.objective == "score":
        schedule = VE(sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    else:
        schedule = VPSchedule(make_betas(args.beta_schedule, args.num_train_timesteps))
    sampler = None
    if args.sample_every and args.objective != "score":
        from medrecon.sample import sample

        sampler = functools.partial(sample, solver="ddim", steps=args.sample_steps, betas=schedule.betas)
    result = train(
        cfg, dataset, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        objective=args.objective, schedule=schedule, ema_decay=args.ema_decay or None,
        grad_clip=args.grad_clip or None, mixed_precision=args.mixed_precision,
        resume=not args.no_resume, overwrite=args.overwrite, save_every=args.save_every or None,
        sampler=sampler, sample_every=args.sample_every, num_samples=args.num_samples,
        init=resolve_checkpoint(args.init, "") if args.init else None,
        seed=args.seed, device=args.device, progress=not args.quiet,
    )
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a (already trained)"
    print(f"step {result.step}  last loss {last}  checkpoint {result.checkpoint}")
    return 0
