"""`medrecon methods`: the registered reconstruction methods (MRI and CT) with their option defaults."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list reconstruction methods and their options")
    p.add_argument("--json", action="store_true", help="print one JSON object per method")
    p.set_defaults(func=run)


def run(args) -> int:
    from medrecon.registry import list_methods

    for spec in list_methods():
        if args.json:
            print(json.dumps({"name": spec.name, "kind": spec.kind, "modality": spec.modality,
                              "description": spec.description, "needs_smaps": spec.needs_smaps,
                              "prior": spec.prior, "options": spec.defaults()}))
        else:
            opts = ", ".join(f"{k}={v}" for k, v in spec.defaults().items()) or "-"
            print(f"{spec.name:<14} [{spec.modality}] {spec.description}\n{'':<14} options: {opts}")
    return 0
