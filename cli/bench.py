"""`medrecon bench operators|solvers|recon|ct`: benchmarks that print tables with in-process ratios."""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark and print a table")
    sub = p.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True

    op = sub.add_parser("operators", help="SENSE forward/adjoint/normal vs fastMRI-style and SigPy")
    op.add_argument("--sizes", nargs="+", default=["brain", "knee"],
                    help="brain (16x640x320), knee (15x640x368) or CxHxW")
    op.add_argument("--acceleration", type=int, default=4)
    op.add_argument("--repeats", type=int, default=10)
    op.add_argument("--no-sigpy", action="store_true", help="skip the SigPy reference")
    op.add_argument("--device", default="cpu", help="torch device, e.g. cuda (SigPy is CPU-only "
                    "and skipped there)")
    op.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    op.set_defaults(func=_operators)

    from medrecon import bench_solvers

    sol = sub.add_parser(
        "solvers", help="solver error vs NFE (analytic prior, small trained U-Net) and DeepCache speed-up vs error",
        description=(bench_solvers.__doc__ or "").split("\n\n")[0])
    bench_solvers.add_arguments(sol)
    sol.set_defaults(func=bench_solvers.main)

    # Each module exposes add_arguments(parser) and main(args) -> int, like bench_solvers.
    for name, module, text in (
        ("recon", "medrecon.bench_recon", "MRI reconstruction quality vs speed on a held-out simulated test set"),
        ("ct", "medrecon.ct.bench", "low-dose CT denoising: FBP, pixel DDPM and latent cold diffusion"),
    ):
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=text, description=(mod.__doc__ or text).split("\n\n")[0])
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.main)


def _parse_size(s: str):
    if s in ("brain", "knee"):
        return s
    try:
        c, h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes: expected 'brain', 'knee' or CxHxW (e.g. 16x640x320), got {s!r}")
    return (c, h, w)


def _operators(args) -> int:
    from medrecon.bench_operators import format_table, run

    import torch

    if args.acceleration < 1:
        raise ValueError(f"--acceleration must be >= 1, got {args.acceleration}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device: expected a torch device such as cpu or cuda, got "
                         f"{args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    rows = run(sizes=[_parse_size(s) for s in args.sizes], acceleration=args.acceleration,
               repeats=args.repeats, sigpy=not args.no_sigpy, device=args.device)
    if args.json:
        for r in rows:
            print(json.dumps({**asdict(r), "vs_fastmri": r.vs_fastmri, "vs_sigpy": r.vs_sigpy}))
    else:
        print(format_table(rows))
    return 0
