"""``medrecon bench pipeline``: options and outputs of the stage timings of ``medrecon recon``
(`medrecon.bench.pipeline`)."""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from medrecon.bench import pipeline as pipeline_module

HELP = "every stage of `medrecon recon` (read, maps, reconstruct, write) vs SigPy, peak memory"
DESCRIPTION = (pipeline_module.__doc__ or HELP).split("\n\n")[0]

OUTPUTS = ("bench_pipeline.md", "bench_pipeline.json")


def add_arguments(p) -> None:
    p.add_argument("--methods", default=",".join(pipeline_module.DEFAULT_METHODS),
                   help="comma-separated MRI methods (default: %(default)s)")
    p.add_argument("--steps", default=",".join(map(str, pipeline_module.DEFAULT_STEPS)),
                   help="step counts of the diffusion methods, comma-separated (default: %(default)s)")
    p.add_argument("--coils", type=int, default=None, help="simulated coils (default 16)")
    p.add_argument("--size", type=int, default=None,
                   help="recon matrix N: k-space 2N x N (default 320)")
    p.add_argument("--slices", type=int, default=None, help="simulated slices (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="slices per call, as in recon")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (SigPy stays on the CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (and OMP/MKL threads of the memory child processes)")
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs per row")
    p.add_argument("--no-sigpy", action="store_true", help="skip the SigPy references")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory child processes")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: 4 coils, 96x48 k-space, 2x, 2 slices, 2 steps "
                   "(explicit flags still win)")
    p.add_argument("--out", default=None, help="folder for bench_pipeline.md and .json")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}: expected integers >= 1, got {text!r}")
    return values


def setup_from_args(args) -> "pipeline_module.Setup":
    """`Setup` from the size flags (``--quick``: `QUICK` where a flag is not given)."""
    base = pipeline_module.QUICK if args.quick else pipeline_module.Setup()
    given = {k: getattr(args, k) for k in ("coils", "size", "slices") if getattr(args, k) is not None}
    for key, value in given.items():
        if value < (16 if key == "size" else 1):
            raise ValueError(f"--{key} must be >= {16 if key == 'size' else 1}, got {value}")
    return replace(base, **given)


def main(args) -> int:
    from medrecon.bench.tables import write_text
    from medrecon.cli.recon import check_device

    check_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods: expected at least one method name")
    steps = _ints("2" if args.quick and args.steps == ",".join(map(str, pipeline_module.DEFAULT_STEPS))
                  else args.steps, "--steps")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out) if args.out else None
    if out is not None:
        if not args.overwrite and any((out / n).exists() for n in OUTPUTS):
            raise FileExistsError(f"{out}: bench outputs exist; pass --overwrite to replace them")
        out.mkdir(parents=True, exist_ok=True)
    say = None if args.quiet else (lambda msg: print(f"[bench pipeline] {msg}", file=sys.stderr))
    result = pipeline_module.run(methods, steps, setup_from_args(args), args.batch_size,
                                 args.device, args.threads, args.repeats, sigpy=not args.no_sigpy,
                                 memory=not args.no_memory, progress=say)
    command = "medrecon bench pipeline " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["bench", "pipeline"] else "medrecon bench pipeline (called from Python)"
    result["command"] = command
    table = pipeline_module.format_table(result)
    if out is not None:
        write_text(out / "bench_pipeline.md", f"{table}\n\nCommand: `{command}`\n")
        write_text(out / "bench_pipeline.json", json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if args.json else table)
    return 0
