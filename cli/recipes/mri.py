"""MRI prior recipes: ``vp`` (VP eps complex-image prior), ``ve`` (VE score prior) and ``hfs``
(HFS-SDE prior, Cao, Cui et al. TMI 2024), all on the simulated multi-coil brain.

Data.  Without ``--data`` the recipe simulates its training set once into ``<out>/data``
(``medrecon.datasets.simulate_mri.simulate_mri_dataset``: ``volumes`` x ``slices`` slices, 8-16
coils, SNR 30, simulator seed ``data_seed`` < 1000 -- seeds >= 1000 are the held-out test sets),
SENSE-combines every fully sampled slice with ESPIRiT maps (``sum_c conj(S_c) x_c``, as
``ImageDataset(mode="complex")``) over the *whole encoded field of view* (256x128 for a 128x128
recon: the posterior methods reconstruct on the k-space grid, readout oversampling included) and
stores the complex images in ``<out>/data/images.pt``; later runs reuse it.  ``--data`` takes any
``medrecon train --data`` source (a tensor file or a fastMRI folder, see ``cli/train.load_images``).

Normalisation (what ``medrecon.methods.vp`` expects with ``normalize=True``: k-space
divided by max |A^H y|, the zero-filled image's maximum): every image x is divided by
max |F^-1 M F x| for a mask M drawn per image (seeded by its index) from fastMRI's 4x (8%
centre) and 8x (4% centre) equispaced_fraction / random masks -- the single-coil form of A^H y.
Training items are ``size`` x ``size`` windows (default 128) of these images at five readout
offsets around the centre, each also flipped left-right: a fixed enumeration, so resuming stays
bit-exact.

Network and schedule: preset ``brain128`` (MONAI UNet, 1.0M parameters) unless ``--preset``;
``vp``: eps objective, 1000 linear betas; ``ve``: VE score, sigma 0.01 .. ``--sigma-max``;
``hfs``: ``medrecon.models.hfs_process.hfs_loss`` with ``HFSSDE(acs)`` (default acs 10: the
fastMRI 4x / 8% ACS of a 128-wide k-space, ``--recipe-option acs=N``).  Recipe options:
``volumes`` (32), ``slices`` (4), ``data_seed`` (0), ``size`` (128), ``acs`` (10, hfs only),
``threads`` (torch threads, default: unchanged), ``minutes`` (wall-time limit of the training
loop: stop early and checkpoint the step reached; 0: none), ``scales`` (1: the multi-scale data of
``mri_scales``, recon matrices 128..384, ``volumes`` x ``slices`` per scale, into
``<out>/data/multiscale.pt``; ``--data`` then takes such a file).  ``--init DIR`` (a checkpoint
or builtin prior name, e.g. ``brain128-vp``) starts a new run from those weights: fine-tuning.
Defaults: ``--steps 2000 --batch-size 8 --lr 5e-4``, EMA 0.999 (the CLI's; runs of ~1k steps want
``--ema-decay 0.99``, docs/priors.md).
Example::

    medrecon train --recipe vp --out runs/brain128-vp --recipe-option threads=1
"""
from __future__ import annotations

import os
from pathlib import Path

from medrecon.datasets.publish import publish_cache

from . import Recipe
from .mri_normalize import normalize_images

__all__ = ["RECIPES", "prepare_images", "normalize_images", "WindowDataset"]

_DEFAULTS = {"preset": "brain128", "steps": 2000, "batch_size": 8, "lr": 5e-4}
_OPTIONS = {"volumes": 32, "slices": 4, "data_seed": 0, "size": 128, "acs": 10, "threads": 0, "minutes": 0,
            "scales": 0}
_OFFSETS = (-32, -16, 0, 16, 32)


def _options(args, recipe: str) -> dict[str, int]:
    opts = dict(_OPTIONS)
    for key, value in (args.recipe_options or {}).items():
        if key not in opts or (key == "acs" and recipe != "hfs"):
            valid = sorted(k for k in opts if k != "acs" or recipe == "hfs")
            raise ValueError(f"--recipe-option {key}: unknown for recipe {recipe!r}; valid: {valid}")
        try:
            opts[key] = int(value)
        except ValueError:
            raise ValueError(f"--recipe-option {key}={value!r}: expected an integer") from None
    for key in ("volumes", "slices", "size", "acs"):
        if opts[key] < 1:
            raise ValueError(f"--recipe-option {key}: expected a positive integer, got {opts[key]}")
    if opts["minutes"] < 0 or opts["threads"] < 0:
        raise ValueError(f"--recipe-option minutes/threads: expected >= 0, got {opts['minutes']}/{opts['threads']}")
    if opts["scales"] not in (0, 1):
        raise ValueError(f"--recipe-option scales: expected 0 or 1, got {opts['scales']}")
    if not 0 <= opts["data_seed"] < 1000:
        raise ValueError(f"--recipe-option data_seed: training data uses simulator seeds 0..999 "
                         f"(>= 1000 are held-out test sets), got {opts['data_seed']}")
    return opts


def prepare_images(data_dir: str | os.PathLike, volumes: int, slices: int, seed: int,
                   progress: bool = True, size: int = 128) -> Path:
    """Simulate (``size`` x ``size`` recon matrix), SENSE-combine and normalise the training set into
    ``data_dir/images.pt`` (complex64 [N, 2 size, size]); returns the path, reusing an existing file."""
    import torch

    from medrecon.datasets.simulate_mri import simulate_mri_dataset
    from medrecon.datasets.slice_dataset import FastMRISliceDataset
    from medrecon.physics.coils import espirit, sense_combine
    from medrecon.physics.fft import ifft2c

    data_dir = Path(data_dir)
    target = data_dir / "images.pt"
    if target.is_file():
        return target
    raw = data_dir / "raw"
    simulate_mri_dataset(raw, volumes, slices, coils=(8, 16), size=(size, size), snr=30.0, seed=seed,
                         progress=progress, overwrite=True)
    ds = FastMRISliceDataset(raw)
    images = []
    for i in range(len(ds)):
        k = torch.as_tensor(ds.raw(i)["kspace"])
        cw = min(24, *k.shape[-2:])
        maps = espirit(k, calib_width=cw, kernel_width=min(6, cw))
        images.append(sense_combine(ifft2c(k), maps))
    x = normalize_images(torch.stack(images), seed)
    return publish_cache(target, lambda tmp: torch.save(x, tmp))


class WindowDataset:
    """``size`` x ``size`` complex windows of images [N, H, W]: readout (row) offsets around the
    centre (``_OFFSETS``, clipped) times {as is, left-right flipped}; item j is image j % N."""

    def __init__(self, images, size: int):
        H, W = images.shape[-2:]
        if W != size or H < size:
            raise ValueError(f"--data: images are {H}x{W}; the recipe needs width {size} and height >= {size} "
                             f"(set --recipe-option size=W)")
        c = (H - size) // 2
        self.offsets = sorted({min(max(c + o, 0), H - size) for o in _OFFSETS})
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images) * len(self.offsets) * 2

    def __getitem__(self, j: int):
        n, r = j % len(self.images), j // len(self.images)
        o = self.offsets[r % len(self.offsets)]
        x = self.images[n, o:o + self.size]
        return x.flip(-1) if r // len(self.offsets) else x


def _load(args, opts):
    import torch

    if opts.get("scales"):
        from .mri_scales import MultiScaleWindows, load_multiscale, prepare_multiscale

        path = args.data or prepare_multiscale(Path(args.out) / "data", opts["volumes"], opts["slices"],
                                               opts["data_seed"], progress=not args.quiet)
        return MultiScaleWindows(load_multiscale(path), opts["size"])
    if args.data is None:
        path = prepare_images(Path(args.out) / "data", opts["volumes"], opts["slices"], opts["data_seed"],
                              progress=not args.quiet, size=opts["size"])
        images = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from medrecon.cli.train import load_images

        ds = load_images(args.data, args.key, "none")
        items = [torch.as_tensor(ds[i]) for i in range(len(ds))]
        images = torch.stack([x if x.is_complex() else torch.complex(x[0], x[1]) for x in items])
        images = normalize_images(images, opts["data_seed"])
    return WindowDataset(images, opts["size"])


def _run(args, recipe: str) -> int:
    import torch

    from medrecon.builtin_priors import resolve_checkpoint
    from medrecon.models.hfs_process import HFSSDE
    from medrecon.models.networks import preset
    from medrecon.models.schedules import VE, VPSchedule, make_betas
    from medrecon.models.train import train

    opts = _options(args, recipe)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    for key, value in _DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.objective is not None:
        raise ValueError(f"--objective: recipe {recipe!r} sets the objective itself")
    cfg = preset(args.preset)
    if opts["size"] % cfg.downsample_factor:
        raise ValueError(f"--recipe-option size={opts['size']} must be divisible by {cfg.downsample_factor} "
                         f"for preset {args.preset!r}")
    dataset = _load(args, opts)
    hfs = None
    if recipe == "vp":
        objective, schedule = "eps", VPSchedule(make_betas(args.beta_schedule, args.num_train_timesteps))
    elif recipe == "ve":
        objective, schedule = "score", VE(sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    else:
        objective, schedule, hfs = "hfs", None, HFSSDE(opts["acs"])
    result = train(
        cfg, dataset, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, objective=objective,
        schedule=schedule, ema_decay=args.ema_decay or None, grad_clip=args.grad_clip or None,
        mixed_precision=args.mixed_precision, resume=not args.no_resume, overwrite=args.overwrite,
        save_every=args.save_every or None, hfs=hfs, time_limit=60.0 * opts["minutes"] or None,
        init=resolve_checkpoint(args.init, "") if getattr(args, "init", None) else None,
        seed=args.seed, device=args.device,
        progress=not args.quiet,
    )
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a (already trained)"
    print(f"recipe {recipe}: step {result.step}  last loss {last}  checkpoint {result.checkpoint}")
    return 0


RECIPES = {
    "vp": Recipe("vp", lambda args: _run(args, "vp"),
                 "VP eps complex-image prior on the simulated brain (128x128, preset brain128)"),
    "ve": Recipe("ve", lambda args: _run(args, "ve"),
                 "VE score complex-image prior on the simulated brain (128x128, preset brain128)"),
    "hfs": Recipe("hfs", lambda args: _run(args, "hfs"),
                  "HFS-SDE prior (high-frequency score, acs 10) on the simulated brain (128x128)"),
}
