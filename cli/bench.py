"""`medrecon bench operators|solvers|recon|pipeline|ct|ct-operators|accel`: benchmarks that print tables with
in-process ratios; each one lives in `medrecon.bench` (options in `medrecon.bench.commands`)."""
from __future__ import annotations

import importlib


def register(subparsers) -> None:
    from medrecon.bench.commands import COMMANDS

    p = subparsers.add_parser("bench", help="run a benchmark and print a table")
    sub = p.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.DESCRIPTION)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.main)
