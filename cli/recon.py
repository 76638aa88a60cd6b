"""`medrecon recon`: reconstruct fastMRI HDF5 files, DICOM MR series, NIfTI volumes or CT scans.

    medrecon recon INPUT [INPUT ...] --method cg-sense [--mask equispaced_fraction
        --acceleration 4 --center-fraction 0.08 --seed 0] [--sample-seed N] [--slices a:b]
        [--steps N --solver S --cache C] [--samples K] [--coils 1] [--out OUT] [--format h5|nifti|dicom]
        [--overwrite] [--keep-phi] [--allow-irregular-spacing] [--json]
        [--option key=value ...] [--device cuda --batch-size 8] [--quiet]

INPUT may be files or folders (`medrecon.inputs.find_inputs`, the same reading as ``medrecon
batch``): a folder gives its volume files (``.h5``, ``.hdf5``, ``.nii``, ``.nii.gz``, ``.npz``,
``.npy``) and its sub-folders (one DICOM series each), or, holding neither, is itself one DICOM
series.  A fastMRI file's own ``mask``
(test/challenge data) is used when present; otherwise the fully sampled data are undersampled
retrospectively and scored against their RSS image.  DICOM and NIfTI hold images, not k-space:
each slice is simulated as k-space (``--coils``, `medrecon.image_inputs`), undersampled with the
mask, reconstructed and scored against the input slice.  ``--out`` is a file (one input) whose
extension sets the format -- ``.h5`` (fastMRI submission format, metadata as attrs),
``.nii``/``.nii.gz`` (NIfTI + JSON sidecar) -- or a folder: one output per input under the
input's name, in ``--format`` (default h5; ``dicom`` writes one series folder per input, or the
folder itself is the series when there is one input).  Outputs keep the input's geometry (a
DICOM output of a DICOM input also its patient/study).  ``--seed`` (alias ``--mask-seed``) seeds
the retrospective mask; ``--sample-seed`` the diffusion sampler.  ``--steps``/``--solver``/
``--cache`` set the method options ``steps``/``solver``/``cache`` (an error for a method without
that option).  ``--samples K`` averages K posterior samples per slice (diffusion methods; an
error for the others).  ``-o KEY=VALUE`` strings are parsed once, here (`medrecon.options`), into the
method's options dataclass, which is passed down.

CT: with a CT method (``fbp``, ``latent-cold-diffusion``, ``pixel-ddpm``; `medrecon methods`) the
inputs are DICOM CT series or sinogram files (`medrecon.ct.inputs`), the mask flags are unused,
and a folder ``--out`` defaults to ``--format dicom`` (a CT series in HU).  A CT input with an
MRI method is a usage error.

Inputs are never written: an output that is an input, lies inside an input series folder,
holds an input, or whose folder is an input folder is a usage error whatever ``--overwrite``
says.  Outputs are published without clobbering (`medrecon.datasets.publish`: of two runs
writing one output exactly one wins); ``--overwrite`` replaces only what medrecon writes for
that output (a DICOM folder series by series; other files stay).  A DICOM output of a DICOM
input is de-identified unless ``--keep-phi``.  ``--device``, the inputs/outputs overlap and the
output folders' writability are checked before any reconstruction.

With ``--json`` one JSON object per volume is printed on stdout (schema: `medrecon.pipeline`).
Progress bars (per volume over slices, per sampling run over network evaluations) go to stderr
when it is a terminal; ``--quiet`` silences them.  Exit codes: 0 all inputs done, 1 some inputs
failed (each reported on stderr; the others still run), 2 usage error (nothing done).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUTPUT_FORMATS = ("h5", "nifti", "dicom")  # = medrecon.outputs.OUTPUT_FORMATS (lazy import)
# sugar flag -> method option it sets
SUGAR = {"steps": "steps", "solver": "solver", "cache": "cache"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recon", help="reconstruct fastMRI HDF5, DICOM MR series, NIfTI or CT scans",
        description="Reconstruct fastMRI HDF5 k-space, DICOM MR series / NIfTI volumes "
        "through retrospectively simulated k-space, or CT scans (DICOM CT series, sinogram "
        "files), with any registered method.  Exit codes: "
        "0 all inputs done, 1 some inputs failed, 2 usage error.")
    p.add_argument("inputs", nargs="+", help="fastMRI .h5 / .nii / .nii.gz files, DICOM series "
                   "folders or files, or folders of .h5 / NIfTI files")
    p.add_argument("--method", default="cg-sense", help="see `medrecon methods`")
    add_sampling_arguments(p)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps: the method option 'steps' (diffusion methods)")
    p.add_argument("--solver", default=None,
                   help="generic solver (ddim, dpm-solver++, unipc, ...): the option 'solver'")
    p.add_argument("--cache", default=None,
                   help="feature cache (DeepCache) setting: the method option 'cache'")
    p.add_argument("--samples", type=int, default=1,
                   help="MRI diffusion methods: average this many posterior samples per slice, "
                   "drawn in one batched run (the posterior mean; NFE counts all of them)")
    p.add_argument("--coils", type=int, default=1,
                   help="DICOM/NIfTI inputs: simulated coils (1: single-coil; N: the "
                   "simulator's birdcage maps)")
    p.add_argument("--out", default=None,
                   help="output .h5/.nii/.nii.gz (one input) or folder")
    p.add_argument("--format", default=None, choices=OUTPUT_FORMATS,
                   help="output format (default: from the --out extension, else h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (only what medrecon wrote; never an input)")
    add_run_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per volume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_run_arguments(p) -> None:
    """The method option, device and input/output flags shared by `recon` and `batch`."""
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. -o max_iter=20)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=1, help="slices per call (GPU: e.g. 8)")
    p.add_argument("--keep-phi", action="store_true",
                   help="DICOM output of a DICOM input: keep its patient/study identifiers "
                   "(default: de-identified, DICOM PS3.15 basic profile)")
    p.add_argument("--allow-irregular-spacing", action="store_true",
                   help="DICOM/NIfTI inputs: accept unevenly spaced slices")


def add_sampling_arguments(p) -> None:
    """The mask, seed and slice options shared by `recon` and `batch`."""
    p.add_argument("--mask", default="equispaced_fraction", help="mask kind for retrospective "
                   "undersampling (random, equispaced, equispaced_fraction, magic, ...)")
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--seed", "--mask-seed", type=int, default=0, help="mask seed")
    p.add_argument("--sample-seed", type=int, default=None,
                   help="sampler seed of diffusion methods (default: the method's, 0)")
    p.add_argument("--slices", default=None, help="slice range 'a:b' or one index")


def _sugar(args) -> dict[str, str]:
    """The option values set by --steps/--solver/--cache (conflicts with -o are usage errors)."""
    from medrecon.options import parse_pairs

    given = {opt: str(getattr(args, flag)) for flag, opt in SUGAR.items()
             if getattr(args, flag) is not None}
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    explicit = parse_pairs(args.option)
    for opt, value in given.items():
        if opt in explicit and explicit[opt] != value:
            raise ValueError(f"--{opt} {value} contradicts -o {opt}={explicit[opt]}")
    return given


def resolve_cli_options(args, sugar: dict[str, str] | None = None):
    """``args.method``'s options dataclass from ``-o`` (and the sugar flags), parsed once."""
    from medrecon.options import check_option_names, parse_pairs, resolve

    sugar = sugar or {}
    check_option_names(args.method, sugar)
    return resolve(args.method, {**parse_pairs(args.option), **sugar})


def check_device(device: str | None) -> None:
    """``--device`` must name a torch device this machine has (ValueError, one line)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else \
                "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             "device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: only cpu, cuda and mps are supported")


def plan_outputs(out: str | None, files: list[Path], given, fmt: str | None,
                 default: str = "h5") -> list[tuple[Path | None, str]]:
    """(output path, format) per input (`medrecon.outputs.output_target`), refusing before
    anything is written any output that is an input, lies in an input series folder, holds an
    input, or whose folder is an input folder (`medrecon.datasets.publish.refuse_input_overlap`;
    ``given``: the paths as typed, folders of inputs included), and two inputs sharing one
    output.  Creates nothing."""
    from medrecon.datasets.publish import printable, refuse_input_overlap
    from medrecon.outputs import input_paths, output_paths, output_target

    plans = [output_target(out, src, len(files), fmt, default=default) for src in files]
    seen: dict[Path, Path] = {}
    for src, (path, _) in zip(files, plans):
        if path is not None and seen.setdefault(path, src) != src:
            raise ValueError(f"inputs {printable(seen[path])} and {printable(src)} would both "
                             f"write {printable(path)}")
    if out is None:
        return plans
    outputs = [q for path, f in plans for q in output_paths(path, f)]
    inputs = [q for src in files for q in input_paths(src)]
    folders = [Path(g) for g in given if Path(g).is_dir() and Path(g) not in files]
    out_dirs = [Path(out)] if any(path != Path(out) for path, _ in plans) else []
    refuse_input_overlap(outputs, inputs, folders=folders, out_dirs=out_dirs)
    return plans


def prepare_output_folders(plans) -> None:
    """Before any work: make the output folders, delete the temp files dead medrecon runs left
    there, and check each takes new files (PermissionError naming the folder)."""
    from medrecon.datasets.publish import probe_writable, remove_stale_temps

    folders: dict[Path, None] = {}
    for path, fmt in plans:
        if path is None:
            continue
        folders[path.parent] = None
        if fmt == "dicom" and path.is_dir():  # an existing series folder: files go inside
            folders[path] = None
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
        probe_writable(folder)


def _error_line(src: Path, exc: BaseException) -> str:
    """``src: message``, naming ``src`` once (most messages already start with it)."""
    from medrecon.datasets.publish import printable

    msg, name = printable(str(exc)), printable(src)
    return msg if name in msg else f"{name}: {msg}"


def _refuse_ct_inputs(method: str, files: list[Path]) -> None:
    """A CT input with an MRI method is a usage error naming the CT methods."""
    from medrecon.ct.inputs import is_ct_input
    from medrecon.registry import list_methods

    ct = [p for p in files if is_ct_input(p)]
    if ct:
        names = ", ".join(s.name for s in list_methods() if s.modality == "ct")
        raise ValueError(f"--method {method!r} is not a CT method; CT inputs (e.g. "
                         f"{ct[0]}) take one of {names}")


def _check_usage(args) -> None:
    if args.acceleration < 1:
        raise ValueError(f"--acceleration must be >= 1, got {args.acceleration}")
    if not 0 < args.center_fraction < 1:
        raise ValueError(f"--center-fraction must be in (0, 1), got {args.center_fraction}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.coils < 1:
        raise ValueError(f"--coils must be >= 1, got {args.coils}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    check_device(args.device)


def run(args) -> int:
    from tqdm.auto import tqdm

    from medrecon.datasets.publish import printable
    from medrecon.inputs import find_inputs
    from medrecon.pipeline import MaskSpec, reconstruct_file
    from medrecon.reconstruct import check_samples
    from medrecon.registry import get_method

    _check_usage(args)
    sugar = _sugar(args)
    spec = get_method(args.method)  # fail early on an unknown method or option
    options = resolve_cli_options(args, sugar)
    check_samples(args.samples, spec)  # a usage error: samples > 1 with a deterministic method
    files = find_inputs(args.inputs)
    ct = spec.modality == "ct"
    if not ct:
        _refuse_ct_inputs(args.method, files)
    plans = plan_outputs(args.out, files, args.inputs, args.format,  # usage errors: exit 2
                         default="dicom" if ct else "h5")
    prepare = getattr(spec.fn, "prepare", None)
    if prepare is not None:  # e.g. load a CT denoiser's networks: a bad checkpoint is a usage error
        prepare(options, args.device)
    acc = int(args.acceleration) if float(args.acceleration).is_integer() else args.acceleration
    mask = MaskSpec(args.mask, acc, args.center_fraction, args.seed)
    prepare_output_folders(plans)  # after every usage check: a usage error creates nothing
    progress = not args.quiet and sys.stderr.isatty()
    failed = 0
    volumes = tqdm(list(zip(files, plans)), desc="volumes", unit="vol",
                   disable=not progress or len(files) < 2, leave=False)
    for src, (out, fmt) in volumes:
        try:
            rec = reconstruct_file(src, args.method, mask, args.slices, out, args.overwrite,
                                   progress, args.device, seed=args.sample_seed,
                                   out_format=fmt, batch_size=args.batch_size,
                                   coils=args.coils, keep_phi=args.keep_phi,
                                   allow_irregular_spacing=args.allow_irregular_spacing,
                                   options=options, samples=args.samples)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            failed += 1
            tqdm.write(f"medrecon recon: error: {_error_line(src, exc)}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(rec, allow_nan=False), flush=True)
        else:
            dest = f" -> {printable(rec['output'])}" if rec["output"] else ""
            tqdm.write(f"{printable(src.name)}: {args.method} {rec['seconds']:.2f} s  "
                       f"{_score(rec['metrics'], ct)}{dest}", file=sys.stdout)
    return 1 if failed else 0


def _score(m: dict | None, ct: bool) -> str:
    """One line of a record's metrics (MRI: PSNR/SSIM/NMSE; CT: RMSE in HU, PSNR, SSIM)."""
    from medrecon.metrics import fmt_metric, summary

    if not m:
        return "no reference" if ct else "no reference (file has its own mask)"
    if ct:
        return (f"RMSE {m['rmse_hu']:.1f} HU  PSNR {fmt_metric(m['psnr'], '.2f')} dB  "
                f"SSIM {m['ssim']:.4f}")
    return summary(m)
