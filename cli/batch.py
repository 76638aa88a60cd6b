"""`medrecon batch`: reconstruct a folder of volumes (MRI or CT), one Ray task per volume.

    medrecon batch INPUT_DIR [INPUT ...] --out OUT_DIR --method cg-sense
        [--address ray://HEAD:10001 | auto | local] [--num-cpus 1 --num-gpus 0.5]
        [--local-cpus N] [--max-retries 3] [--plugin MODULE_OR_FILE.py ...]
        [recon options: --mask --acceleration --center-fraction --seed --sample-seed --slices
         --format --option KEY=VALUE --device --batch-size --overwrite] [--json] [--quiet]

Without ``--address`` (or with ``local``) a local Ray instance is started; without Ray installed
the volumes run one by one in this process.  A rerun skips the volumes already done; failures go
to ``OUT_DIR/batch-failures.jsonl`` and the batch goes on (semantics: `medrecon.batch`).  A line
per volume as it finishes and a summary are printed, or with ``--json`` one JSON object (the
summary with every volume's record).  Exit code 0 when every volume is done or skipped, 1 when
some failed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from medrecon.cli.recon import OUTPUT_FORMATS, add_run_arguments, add_sampling_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser("batch", help="reconstruct a folder of volumes on Ray (resumable)")
    p.add_argument("inputs", nargs="+", help="input volumes (as `medrecon recon`: fastMRI .h5, "
                   "NIfTI, DICOM MR or CT series, sinogram files) or folders of them")
    p.add_argument("--out", required=True, help="output folder (one output per input)")
    p.add_argument("--method", default="cg-sense", help="see `medrecon methods`")
    p.add_argument("--address", default=None,
                   help="Ray cluster: ray://HEAD:10001, auto, or local (default: a local "
                        "instance; in-process when Ray is not installed)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per task")
    p.add_argument("--num-gpus", type=float, default=0,
                   help="GPUs per task (a fraction shares a GPU); > 0 reconstructs on cuda")
    p.add_argument("--local-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--max-retries", type=int, default=3,
                   help="retries of a task whose worker died")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import in every worker first (methods registered outside medrecon)")
    add_sampling_arguments(p)
    p.add_argument("--format", default=None, choices=OUTPUT_FORMATS,
                   help="output format (default: h5; dicom for CT methods)")
    add_run_arguments(p)  # --option --device --batch-size --keep-phi --allow-irregular-spacing
    p.add_argument("--overwrite", action="store_true", help="redo and replace every output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no line per volume")
    p.set_defaults(func=run)


def _line(res) -> str:
    name = Path(res.file).name
    retry = f" (attempt {res.attempts}: retried after its worker died)" if res.attempts > 1 else ""
    if res.status == "failed":
        return f"{name}: FAILED {res.error}{retry}"
    if res.status == "skipped":
        return f"{name}: skipped, already done -> {res.output}"
    return f"{name}: done in {res.seconds:.2f} s -> {res.output}{retry}"


def run(args) -> int:
    from medrecon.batch import run_batch
    from medrecon.cli.recon import check_device, resolve_cli_options
    from medrecon.pipeline import MaskSpec

    check_device(args.device)  # exit 2 before any work
    options = resolve_cli_options(args)  # -o parsed once, here

    acc = int(args.acceleration) if float(args.acceleration).is_integer() else args.acceleration
    mask = MaskSpec(args.mask, acc, args.center_fraction, args.seed)
    verbose = not (args.json or args.quiet)
    summary = run_batch(
        args.inputs, args.out, args.method, mask, options=options,
        slices=args.slices, out_format=args.format, overwrite=args.overwrite,
        device=args.device, seed=args.sample_seed, batch_size=args.batch_size,
        address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        local_cpus=args.local_cpus, max_retries=args.max_retries, plugins=args.plugin,
        keep_phi=args.keep_phi, allow_irregular_spacing=args.allow_irregular_spacing,
        on_result=(lambda r: print(_line(r), flush=True)) if verbose else None)
    if args.json:
        print(json.dumps(summary.to_dict()), flush=True)
    else:
        s = summary
        retried = f", {len(s.retried)} retried" if s.retried else ""
        print(f"batch: {len(s.done)} done, {len(s.skipped)} skipped, {len(s.failed)} failed"
              f"{retried} in {s.seconds:.1f} s ({s.executor}) -> {s.out_dir}", flush=True)
        if s.failures_file:
            print(f"failures: {s.failures_file}", file=sys.stderr, flush=True)
    return 1 if summary.failed else 0
