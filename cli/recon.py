"""`medrecon recon`: reconstruct fastMRI HDF5 files, DICOM MR series or NIfTI volumes.

    medrecon recon INPUT [INPUT ...] --method cg-sense [--mask equispaced_fraction
        --acceleration 4 --center-fraction 0.08 --seed 0] [--sample-seed N] [--slices a:b]
        [--steps N --solver S --cache C] [--coils 1] [--out OUT] [--format h5|nifti|dicom]
        [--overwrite] [--keep-phi] [--allow-irregular-spacing] [--json]
        [--option key=value ...] [--device cuda --batch-size 8] [--quiet]

INPUT may be files or folders: a folder of ``*.h5`` / ``*.nii`` / ``*.nii.gz`` files (every one
inside), else the folder is read as one DICOM series.  A fastMRI file's own ``mask``
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
that option).  CT inputs or CT methods go to `medrecon.ct.recon.run_cli`.

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

OUTPUT_FORMATS = ("h5", "nifti", "dicom")  # = medrecon.pipeline.OUTPUT_FORMATS (lazy import)
# sugar flag -> method option it sets
SUGAR = {"steps": "steps", "solver": "solver", "cache": "cache"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recon", help="reconstruct fastMRI HDF5, DICOM MR series or NIfTI",
        description="Reconstruct fastMRI HDF5 k-space, or DICOM MR series / NIfTI volumes "
        "through retrospectively simulated k-space, with any registered method.  Exit codes: "
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
    p.add_argument("--coils", type=int, default=1,
                   help="DICOM/NIfTI inputs: simulated coils (1: single-coil; N: the "
                   "simulator's birdcage maps)")
    p.add_argument("--out", default=None,
                   help="output .h5/.nii/.nii.gz (one input) or folder")
    p.add_argument("--format", default=None, choices=OUTPUT_FORMATS,
                   help="output format (default: from the --out extension, else h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (only what medrecon wrote; never an input)")
    p.add_argument("--keep-phi", action="store_true",
                   help="DICOM output of a DICOM input: keep its patient/study identifiers "
                   "(default: de-identified)")
    p.add_argument("--allow-irregular-spacing", action="store_true",
                   help="DICOM/NIfTI inputs: accept unevenly spaced slices")
    p.add_argument("--json", action="store_true", help="print one JSON object per volume")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. -o max_iter=20)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=1, help="slices per call (GPU: e.g. 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


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


def _options(pairs: list[str], flag: str = "--option") -> dict[str, str]:
    """KEY=VALUE pairs of a repeatable flag as a dict (dashes in keys become underscores)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = value
    return out


def _sugar(args) -> dict[str, str]:
    """The option values set by --steps/--solver/--cache (conflicts with -o are usage errors)."""
    given = {opt: str(getattr(args, flag)) for flag, opt in SUGAR.items()
             if getattr(args, flag) is not None}
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    explicit = _options(args.option)
    for opt, value in given.items():
        if opt in explicit and explicit[opt] != value:
            raise ValueError(f"--{opt} {value} contradicts -o {opt}={explicit[opt]}")
    return given


def _check_sugar(method: str, given: dict[str, str]) -> None:
    """Each sugar flag needs its option in the method's option dataclass; name who has it."""
    import dataclasses

    from medrecon.registry import get_method, list_methods

    fields = {f.name for f in dataclasses.fields(get_method(method).options)}
    for opt in given:
        if opt not in fields:
            having = [s.name for s in list_methods()
                      if opt in {f.name for f in dataclasses.fields(s.options)}]
            raise ValueError(f"--{opt}: method {method!r} has no option {opt!r}; methods with it: "
                             f"{', '.join(having) or '(none yet)'}")


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
    """(output path, format) per input (`medrecon.pipeline.output_target`), refusing before
    anything is written any output that is an input, lies in an input series folder, holds an
    input, or whose folder is an input folder (`medrecon.datasets.publish.refuse_input_overlap`;
    ``given``: the paths as typed, folders of inputs included), and two inputs sharing one
    output.  Creates nothing."""
    from medrecon.datasets.publish import printable, refuse_input_overlap
    from medrecon.pipeline import input_paths, output_paths, output_target

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


def _ct_module():
    """`medrecon.ct.recon` when it exists (None while it is not written yet)."""
    import importlib

    try:
        return importlib.import_module("medrecon.ct.recon")
    except ModuleNotFoundError as exc:
        if exc.name in ("medrecon.ct.recon", "medrecon.ct"):
            return None
        raise


def _is_ct(ct, path: Path) -> bool:
    """``ct.is_ct_input``; an unreadable input is not CT here (it fails as an MRI input, with
    the reader's error, exit code 1)."""
    try:
        return path.exists() and bool(ct.is_ct_input(path))
    except Exception:
        return False


def _check_usage(args) -> None:
    if args.acceleration < 1:
        raise ValueError(f"--acceleration must be >= 1, got {args.acceleration}")
    if not 0 < args.center_fraction < 1:
        raise ValueError(f"--center-fraction must be in (0, 1), got {args.center_fraction}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.coils < 1:
        raise ValueError(f"--coils must be >= 1, got {args.coils}")
    check_device(args.device)


def run(args) -> int:
    from tqdm.auto import tqdm

    from medrecon.image_inputs import find_inputs

    _check_usage(args)
    sugar = _sugar(args)
    files = find_inputs(args.inputs)
    ct = _ct_module()
    is_ct = ct is not None and (args.method in ct.CT_METHODS or any(_is_ct(ct, p) for p in files))
    plans = plan_outputs(args.out, files, args.inputs, args.format,  # usage errors: exit 2
                         default="dicom" if is_ct else "h5")
    if is_ct:
        explicit = _options(args.option)  # the sugar flags travel as options
        args.option = list(args.option) + [f"{k}={v}" for k, v in sugar.items()
                                           if k not in explicit]
        prepare_output_folders(plans)
        return int(ct.run_cli(args, files) or 0)

    from medrecon.datasets.publish import printable
    from medrecon.pipeline import MaskSpec, reconstruct_file
    from medrecon.registry import get_method, resolve_options

    spec = get_method(args.method)  # fail early on an unknown method or option
    _check_sugar(args.method, sugar)
    options = {**_options(args.option), **sugar}
    resolve_options(spec, options)
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
                                   **options)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            failed += 1
            tqdm.write(f"medrecon recon: error: {_error_line(src, exc)}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(rec, allow_nan=False), flush=True)
        else:
            from medrecon.metrics import summary

            m = rec["metrics"]
            score = summary(m) if m else "no reference (file has its own mask)"
            dest = f" -> {printable(rec['output'])}" if rec["output"] else ""
            tqdm.write(f"{printable(src.name)}: {args.method} {rec['seconds']:.2f} s  "
                       f"{score}{dest}", file=sys.stdout)
    return 1 if failed else 0
