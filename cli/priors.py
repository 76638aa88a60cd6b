"""`medrecon priors`: the trained priors shipped with medrecon (`medrecon.builtin_priors`).

One row per prior: name, kind, parameters (from the weights header), size on disk, training data
and steps, intended NFE and the methods that load it by default (the registry's ``prior``).  Any
diffusion method takes such a name as ``-o checkpoint=NAME`` (or a checkpoint folder).  ``--json``
prints one JSON object per prior for pipelines.
"""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("priors", help="list the trained priors shipped with medrecon")
    p.add_argument("--json", action="store_true", help="print one JSON object per prior")
    p.set_defaults(func=run)


def rows() -> list[dict]:
    """`medrecon.builtin_priors.describe` of every shipped prior, with ``default_of``: the registered
    methods whose ``checkpoint`` defaults to it."""
    import medrecon  # noqa: F401  (registers the methods)
    from medrecon.builtin_priors import PRIORS, describe
    from medrecon.registry import list_methods

    out = []
    for name in PRIORS:
        row = describe(name)
        row["default_of"] = [spec.name for spec in list_methods() if spec.prior == name]
        out.append(row)
    return out


def run(args) -> int:
    for row in rows():
        if args.json:
            print(json.dumps(row))
            continue
        runs = " + ".join(str(n) for n in row["training_runs"])
        print(f"{row['name']}  [{row['kind']}]  {row['description']}\n"
              f"  parameters {row['parameters']:,}, {row['size_bytes'] / 1e6:.1f} MB on disk, {row['network']}, "
              f"{row['prediction']} on a {row['schedule']} schedule, {row['weights']} weights\n"
              f"  trained {row['training_steps']} steps ({runs}) on {row['training_data']}\n"
              f"  intended NFE {row['nfe']}: {row['nfe_note']}\n"
              f"  default of: {', '.join(row['default_of']) or '-'}   (elsewhere: -o checkpoint={row['name']})")
    return 0
