"""The `medrecon` command: a thin shell over the Python API.

Each subcommand lives in its own module of this package exposing
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code).  Add a subcommand by adding its module name to
``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: list[str] = ["recon", "demo", "methods", "priors", "simulate", "train", "bench", "info",
                          "compare", "batch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrecon", description="Accelerated MRI/CT reconstruction with diffusion priors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"medrecon.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError) as exc:
        print(f"medrecon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
