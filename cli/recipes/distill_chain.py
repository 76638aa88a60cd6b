"""``distill-chain`` recipe: a K-step DDNM student distilled end to end from the teacher's N-step DDNM
reconstructions (``medrecon.models.distill_chain``; docs/distill.md):

    medrecon train --recipe distill-chain --teacher brain128-vp --target-steps 4 --out runs/vp-chain4 \\
        [--steps 600] [--batch-size 8] [--lr 1e-4] [--ema-decay 0.99] [--recipe-option teacher_steps=50]

``--teacher``: a shipped prior name or a checkpoint directory (VP eps / x0 / v).  ``--target-steps`` K:
the student's DDNM steps (grid ``ddim_dc.grid(K, T)``).  ``--steps``: training steps (default 600).
Recipe options: ``teacher_steps`` (50), ``eta`` (0.85, DDNM's: the teacher's), ``student_eta`` (the student
chain's; default ``eta``), ``bank_items`` (512 training problems
whose teacher reconstructions are computed once), ``bank_batch`` (16), ``val_items`` (16 held-out
problems from the dataset's last items), ``accelerations`` (``4,8``), ``kinds``
(``equispaced_fraction,random``), and the data options of ``cli/recipes/mri.py`` (``volumes``,
``slices``, ``data_seed``, ``size``, ``scales``, ``threads``).  ``whole=S`` (a multi-scale size, e.g. 128):
the items are the whole scale-S images [2 S, S] of the multi-scale data (``--data`` its multiscale.pt)
instead of 128x128 windows, so that a mask's aliasing has the geometry it has in ``medrecon recon``
(replicas W/R apart across the whole field of view; a window's own FFT puts them 128/R apart).
``rows=R`` (with ``whole``): each problem is an R-row strip of a whole image, at a random offset
within the head, with the whole image's mask and scale: the same per-row problem as the whole image
(a column mask acts on each row alone) at R/(2 S) of the cost; ``whole=320 rows=128`` trains on
inference's aliasing and pixel scale.  ``init=NAME|DIR``: start the student from that checkpoint
(e.g. an earlier student) instead of the teacher.  ``coils=C``: multi-coil SENSE problems with C
simulated coil sensitivities (the data step is then DDNM's CG projection, as in ``medrecon recon``).
``truth_weight=w`` (default 0): train on
(1 - w) |chain - teacher|^2 + w |chain - truth|^2, adding the bank's truth to the teacher's target (a
supervised departure from distillation; docs/distill.md).  ``snr=s``: the simulator's measurement
noise (SNR s, as ``medrecon simulate mri``'s default 30) in every problem.  ``cg_iters=N``: the student
chain's CG iterations in its data step (default DDNM's 10; the teacher keeps 10).  A rerun resumes (the bank's finished
chunks and the last checkpoint).
"""
from __future__ import annotations

from . import Recipe
from .distill import prepare

_DEFAULTS = {"steps": 600, "batch_size": 8, "lr": 1e-4}
_INT = {"teacher_steps": 50, "bank_items": 512, "bank_batch": 16, "val_items": 16, "whole": 0, "rows": 0, "coils": 0,
        "cg_iters": 0}
_DATA = ("volumes", "slices", "data_seed", "size", "scales", "threads")  # cli/recipes/mri.py's options


def _options(args) -> tuple[dict, dict[str, str]]:
    own = {**_INT, "eta": 0.85, "student_eta": None, "truth_weight": 0.0, "snr": 0.0, "accelerations": (4, 8), "kinds": ("equispaced_fraction", "random"),
           "init": None}
    data = {}
    for key, value in (args.recipe_options or {}).items():
        try:
            if key in _INT:
                own[key] = int(value)
            elif key in ("eta", "student_eta", "truth_weight", "snr"):
                own[key] = float(value)
            elif key == "accelerations":
                own[key] = tuple(int(v) for v in value.split(","))
            elif key == "kinds":
                own[key] = tuple(v.strip() for v in value.split(","))
            elif key == "init":
                own[key] = value
            elif key in _DATA:
                data[key] = value
            else:
                raise KeyError(key)
        except ValueError:
            raise ValueError(f"--recipe-option {key}={value!r}: expected "
                             f"{'a number' if key in (*_INT, 'eta', 'student_eta', 'truth_weight', 'snr') else 'a comma-separated list'}") from None
        except KeyError:
            raise ValueError(f"--recipe-option {key}: unknown for recipe 'distill-chain'; valid: "
                             f"{sorted([*_INT, 'eta', 'student_eta', 'truth_weight', 'snr', 'accelerations', 'kinds', 'init', *_DATA])}") from None
    for key in ("eta", "student_eta", "truth_weight"):
        if own[key] is not None and not 0 <= own[key] <= 1:
            raise ValueError(f"--recipe-option {key}={own[key]}: expected 0 <= {key} <= 1")
    if own["snr"] < 0 or own["cg_iters"] < 0:
        raise ValueError(f"--recipe-option snr={own['snr']}, cg_iters={own['cg_iters']}: expected 0 (noise-free; "
                         f"DDNM's 10 CG iterations) or positive values")
    if own["rows"] and not own["whole"]:
        raise ValueError(f"--recipe-option rows={own['rows']}: strips are cut from whole images; give whole=S too")
    return own, data


class WholeImages:
    """The whole images [2 s, s] (the encoded field of view, readout oversampling included, as ``medrecon
    recon`` reconstructs them) of one scale of the multi-scale data, image-major: item j is image j // 2,
    left-right flipped when j is odd (so the last items hold whole images, both flips)."""

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return 2 * len(self.images)

    def __getitem__(self, j: int):
        x = self.images[j // 2]
        return x.flip(-1) if j % 2 else x


def _data(args, opts, whole: int):
    """The recipe's items: the MRI recipes' windows, or with ``whole=S`` the whole scale-S images."""
    from pathlib import Path

    from .mri import _load

    if not whole:
        return _load(args, opts)
    from .mri_scales import load_multiscale, prepare_multiscale

    if whole < 0:
        raise ValueError(f"--recipe-option whole={whole}: expected 0 (windows) or a scale of the multi-scale data")
    path = args.data or prepare_multiscale(Path(args.out) / "data", opts["volumes"], opts["slices"],
                                           opts["data_seed"], progress=not args.quiet)
    images = load_multiscale(path)
    if whole not in images:
        raise ValueError(f"--recipe-option whole={whole}: --data {path} holds the scales {sorted(images)}")
    return WholeImages(images[whole])


def _run(args) -> int:
    from medrecon.models.distill_chain_train import distill_chain

    from .distill import _teacher

    own, opts, teacher, name = prepare(args, "distill-chain", ("preset", "objective", "init", "steps_per_round"),
                                       "--steps", _options, _DEFAULTS)
    init, init_name = _teacher(own["init"], args.device, "--recipe-option init") if own["init"] else (None, "")
    result = distill_chain(
        teacher, _data(args, opts, own["whole"]), args.out, steps=args.target_steps, teacher_steps=own["teacher_steps"],
        eta=own["eta"], student_eta=own["student_eta"], bank_items=own["bank_items"], bank_batch=own["bank_batch"], val_items=own["val_items"],
        train_steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay or None,
        grad_clip=args.grad_clip or None, save_every=args.save_every or None, kinds=own["kinds"],
        accelerations=own["accelerations"], teacher_name=name, seed=args.seed, device=args.device,
        resume=not args.no_resume, overwrite=args.overwrite, progress=not args.quiet, rows=own["rows"],
        init=init, init_name=init_name, truth_weight=own["truth_weight"], coils=own["coils"], snr=own["snr"],
        cg_iters=own["cg_iters"])
    r = result.record
    print(f"DDNM-{r['teacher_steps']} -> DDNM-{r['steps']}: held-out MSE against the teacher "
          f"{r['heldout_mse_before']:.3g} -> {r['heldout_mse']:.3g}; PSNR {r['heldout_psnr_before']:.2f} -> "
          f"{r['heldout_psnr']:.2f} dB (teacher {r['teacher_psnr']:.2f})")
    print(f"recipe distill-chain: student {result.checkpoint} (steps={r['steps']}, grid {result.grid})")
    return 0


RECIPES = {
    "distill-chain": Recipe("distill-chain", _run, "a --target-steps DDNM student distilled end to end from the "
                                                   "--teacher's many-step DDNM reconstructions"),
}
