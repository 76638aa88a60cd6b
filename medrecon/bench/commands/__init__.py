"""The argparse glue of ``medrecon bench X``, one module per benchmark, apart from the measurements.

Each module has ``HELP`` (one line for ``medrecon bench -h``), ``DESCRIPTION`` (its ``-h`` text or
None), ``add_arguments(parser)`` and ``main(args) -> int``; `COMMANDS` names them in the order
``medrecon bench -h`` lists them.
"""
COMMANDS = {
    "operators": "medrecon.bench.commands.operators",
    "solvers": "medrecon.bench.commands.solvers",
    "recon": "medrecon.bench.commands.recon",
    "pipeline": "medrecon.bench.commands.pipeline",
    "ct": "medrecon.bench.commands.ct",
    "ct-operators": "medrecon.bench.commands.ct_operators",
    "accel": "medrecon.bench.commands.accel",
}
