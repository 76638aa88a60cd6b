"""``medrecon bench operators``: options and output of the MRI operator timings
(`medrecon.bench.operators`)."""
from __future__ import annotations

import json
from dataclasses import asdict

HELP = "SENSE forward/adjoint/normal vs fastMRI-style and SigPy"
DESCRIPTION = None


def add_arguments(op) -> None:
    op.add_argument("--sizes", nargs="+", default=["brain", "knee"],
                    help="brain (16x640x320), knee (15x640x368) or CxHxW")
    op.add_argument("--acceleration", type=int, default=4)
    op.add_argument("--repeats", type=int, default=10)
    op.add_argument("--no-sigpy", action="store_true", help="skip the SigPy reference")
    op.add_argument("--device", default="cpu", help="torch device, e.g. cuda (SigPy is CPU-only "
                    "and skipped there)")
    op.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def parse_size(s: str):
    """``brain`` / ``knee`` or ``CxHxW`` -> the size `medrecon.bench.operators.run` takes."""
    if s in ("brain", "knee"):
        return s
    try:
        c, h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes: expected 'brain', 'knee' or CxHxW (e.g. 16x640x320), got {s!r}")
    return (c, h, w)


def main(args) -> int:
    import torch

    from medrecon.bench.operators import format_table, run

    if args.acceleration < 1:
        raise ValueError(f"--acceleration must be >= 1, got {args.acceleration}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device: expected a torch device such as cpu or cuda, got "
                         f"{args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    rows = run(sizes=[parse_size(s) for s in args.sizes], acceleration=args.acceleration,
               repeats=args.repeats, sigpy=not args.no_sigpy, device=args.device)
    if args.json:
        for r in rows:
            print(json.dumps({**asdict(r), "vs_fastmri": r.vs_fastmri, "vs_sigpy": r.vs_sigpy}))
    else:
        print(format_table(rows))
    return 0
