"""`medrecon recon`: reconstruct fastMRI-format HDF5 files with any registered method.

    medrecon recon INPUT [INPUT ...] --method cg-sense [--mask equispaced_fraction
        --acceleration 4 --center-fraction 0.08 --seed 0] [--sample-seed N] [--slices a:b]
        [--out OUT] [--format h5|nifti|dicom] [--overwrite] [--json] [--option key=value ...]
        [--device cuda --batch-size 8] [--quiet]

INPUT may be files or folders (every ``*.h5`` inside).  A file's own ``mask`` (test/challenge
data) is used when present; otherwise the fully sampled data are undersampled retrospectively and
scored against their RSS image.  ``--out`` is a file (one input) whose extension sets the format
-- ``.h5`` (fastMRI submission format, metadata as attrs), ``.nii``/``.nii.gz`` (NIfTI + JSON
sidecar) -- or a folder: one output per input under the input's name, in ``--format`` (default
h5; ``dicom`` writes one series folder per input, or the folder itself is the series when there is
one input).  ``--seed`` (alias ``--mask-seed``) seeds the retrospective mask; ``--sample-seed``
the diffusion sampler.  With ``--json`` one JSON object per
volume is printed on stdout (schema: `medrecon.pipeline`); a bad file is reported on stderr, the
batch continues and the exit code is 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUTPUT_FORMATS = ("h5", "nifti", "dicom")  # = medrecon.pipeline.OUTPUT_FORMATS (lazy import)
_EXT = {".h5": "h5", ".nii": "nifti", ".nii.gz": "nifti"}


def register(subparsers) -> None:
    p = subparsers.add_parser("recon", help="reconstruct fastMRI-format HDF5 files")
    p.add_argument("inputs", nargs="+", help="fastMRI .h5 files or folders of them")
    p.add_argument("--method", default="cg-sense", help="see `medrecon methods`")
    p.add_argument("--mask", default="equispaced_fraction", help="mask kind for retrospective "
                   "undersampling (random, equispaced, equispaced_fraction, magic, ...)")
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--seed", "--mask-seed", type=int, default=0, help="mask seed")
    p.add_argument("--sample-seed", type=int, default=None,
                   help="sampler seed of diffusion methods (default: the method's, 0)")
    p.add_argument("--slices", default=None, help="slice range 'a:b' or one index")
    p.add_argument("--out", default=None,
                   help="output .h5/.nii/.nii.gz (one input) or folder")
    p.add_argument("--format", default=None, choices=OUTPUT_FORMATS,
                   help="output format (default: from the --out extension, else h5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object per volume")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. -o max_iter=20)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=1, help="slices per call (GPU: e.g. 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _inputs(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise ValueError(f"{p}: folder contains no .h5 files")
            files += found
        else:
            files.append(p)
    return files


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = value
    return out


def _file_format(name: str) -> str | None:
    return next((f for ext, f in _EXT.items() if name.endswith(ext)), None)


def _out_path(out: str | None, src: Path, n_inputs: int,
              fmt: str | None) -> tuple[Path | None, str]:
    """(output path, format) for input ``src``; see the module docstring."""
    if out is None:
        return None, fmt or "h5"
    o = Path(out)
    ext_fmt = None if o.is_dir() else _file_format(o.name)
    if ext_fmt is not None:
        if fmt is not None and fmt != ext_fmt:
            raise ValueError(f"--format {fmt} contradicts the extension of --out {o}")
        if n_inputs > 1:
            raise ValueError(f"--out {o} is a file but {n_inputs} inputs were given: pass a folder")
        return o, ext_fmt
    fmt = fmt or "h5"
    if fmt == "dicom" and n_inputs == 1:
        o.parent.mkdir(parents=True, exist_ok=True)
        return o, fmt
    o.mkdir(parents=True, exist_ok=True)
    stem = src.name[:-3] if src.name.endswith(".h5") else src.stem
    name = {"h5": src.name, "nifti": stem + ".nii.gz", "dicom": stem}[fmt]
    return o / name, fmt


def run(args) -> int:
    from medrecon.pipeline import MaskSpec, reconstruct_file
    from medrecon.registry import get_method, resolve_options

    spec = get_method(args.method)  # fail early on an unknown method or option
    options = _options(args.option)
    resolve_options(spec, options)
    if args.acceleration < 1:
        raise ValueError(f"--acceleration must be >= 1, got {args.acceleration}")
    if not 0 < args.center_fraction < 1:
        raise ValueError(f"--center-fraction must be in (0, 1), got {args.center_fraction}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    acc = int(args.acceleration) if float(args.acceleration).is_integer() else args.acceleration
    mask = MaskSpec(args.mask, acc, args.center_fraction, args.seed)
    files = _inputs(args.inputs)
    progress = not args.quiet and sys.stderr.isatty()
    failed = 0
    for src in files:
        try:
            out, fmt = _out_path(args.out, src, len(files), args.format)
            rec = reconstruct_file(src, args.method, mask, args.slices, out, args.overwrite,
                                   progress, args.device, seed=args.sample_seed,
                                   out_format=fmt, batch_size=args.batch_size, **options)
        except (ValueError, OSError, KeyError) as exc:
            failed += 1
            print(f"medrecon recon: error: {src}: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            m = rec["metrics"]
            score = (f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  NMSE {m['nmse']:.4f}"
                     if m else "no reference (file has its own mask)")
            dest = f" -> {rec['output']}" if rec["output"] else ""
            print(f"{src.name}: {args.method} {rec['seconds']:.2f} s  {score}{dest}", flush=True)
    return 1 if failed else 0
