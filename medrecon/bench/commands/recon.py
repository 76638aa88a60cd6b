"""``medrecon bench recon``: options, and the run that writes the outputs (`medrecon.bench.recon`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import medrecon.bench.recon as recon_package
from medrecon.bench.recon.report import check_goals, format_table, verdict, write_results
from medrecon.bench.recon.rows import (DEFAULT_FAMILIES, FOVS, MASKS, OUTPUTS, STEPS_FAMILIES, Row, label,
                                       make_test_mask, parse_ints, parse_mask, plan, split_list,
                                       test_set)
from medrecon.bench.recon.run import run_rows
from medrecon.options import method_pairs
from medrecon.physics.masks import acs_width
from medrecon.registry import get_method, list_methods, resolve_options
from medrecon.sample import SOLVERS

__all__ = ["add_arguments", "quick_defaults", "main"]

HELP = "MRI reconstruction quality vs speed on a held-out simulated test set"
DESCRIPTION = (recon_package.__doc__ or HELP).split("\n\n")[0]


QUICK = {"slices": 1, "masks": "8x-equispaced,10x-uniform-acs24", "nfe": "10", "solvers": "ddim,dpm-solver++",
         "deepcache": "1,2", "score_steps": "10", "hfs_steps": "10", "spirit_steps": "10", "dps_steps": "10"}


def add_arguments(p) -> None:
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default: {','.join(DEFAULT_FAMILIES)}; "
                   "fdmr when registered)")
    p.add_argument("--masks", default=",".join(MASKS), help="mask presets or KIND:R:CENTER_FRACTION, comma-separated")
    p.add_argument("--nfe", default="10,20,50", help="NFE budgets of dds/ddnm (each solver) and ccdf")
    p.add_argument("--solvers", default=",".join(SOLVERS), help="generic solvers run through dds/ddnm")
    p.add_argument("--deepcache", default="1,3", help="DeepCache intervals for dds/ddnm rows (1 = off)")
    p.add_argument("--score-steps", default="1000", help="score-mri N values")
    p.add_argument("--hfs-steps", default="1000,100", help="hfs-sde N values")
    p.add_argument("--spirit-steps", default="1000", help="spirit-diffusion N values")
    p.add_argument("--dps-steps", default="1000", help="dps N values")
    p.add_argument("--slices", type=int, default=4, help="number of held-out test slices")
    p.add_argument("--seed", type=int, default=1000, help="simulator seed of the first slice (>= 1000)")
    p.add_argument("--size", type=int, default=128, help="recon matrix (square)")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr", type=float, default=30.0, help="simulator k-space SNR")
    p.add_argument("--fov", default="full", choices=FOVS, help="full: reconstruct the readout-oversampled grid "
                   "and crop (as medrecon recon); crop: remove the oversampling first")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the diffusion samplers")
    p.add_argument("--fdmr-checkpoint", default=None, help="DDGAN checkpoint for the fdmr rows (default: the "
                   "shipped brain128-ddgan)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method option, repeatable (e.g. -o dds.checkpoint=DIR)")
    p.add_argument("--quick", action="store_true", help="tiny run: 1 slice, 2 masks, NFE 10, two solvers, N = 10 "
                   "(explicit flags still win)")
    p.add_argument("--out", default=None, help="folder for bench_recon.{md,json} and the figures")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: merge the bench_recon.json of runs on the same slices into one table, goal "
                   "check and PSNR-vs-NFE figure (with --out)")


def quick_defaults(args) -> None:
    """``--quick``: fill in `QUICK` where the user left an option at its default."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    ref = vars(defaults.parse_args([]))
    for key, value in QUICK.items():
        if getattr(args, key) == ref[key]:
            setattr(args, key, value)


def main(args=None) -> int:
    if args is None or isinstance(args, list):
        parser = argparse.ArgumentParser(description=DESCRIPTION)
        add_arguments(parser)
        args = parser.parse_args(args)
    if getattr(args, "merge", None):
        from medrecon.bench.recon.merge import main_merge

        return main_merge(args.merge, args.out, args.overwrite)
    if args.quick:
        quick_defaults(args)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    registered = {s.name for s in list_methods()}
    fdmr_ckpt = args.fdmr_checkpoint
    families = split_list(args.methods) if args.methods else [m for m in DEFAULT_FAMILIES if m in registered]
    masks = split_list(args.masks)
    for m in masks:
        parse_mask(m)
    options = method_pairs(args.option, families)
    skipped = []
    if not args.methods:  # by default, diffusion methods without a prior (none shipped, none given) are left out
        for fam in families[:]:
            spec = get_method(fam)
            if spec.kind == "diffusion" and getattr(resolve_options(spec, options[fam]), "checkpoint", None) == "":
                families.remove(fam)
                skipped.append(f"{fam}: no checkpoint (no builtin prior fits it); pass -o {fam}.checkpoint=DIR")
    if "fdmr" in families and "checkpoint" not in options["fdmr"] and fdmr_ckpt:
        options["fdmr"]["checkpoint"] = fdmr_ckpt
    steps = {k: parse_ints(getattr(args, k), "--" + k.replace("_", "-")) for k in STEPS_FAMILIES.values()}
    entries = plan(families, parse_ints(args.nfe, "--nfe"), split_list(args.solvers), parse_ints(args.deepcache, "--deepcache"),
                   steps, options)
    folder = Path(args.out) if args.out else None
    if folder is not None:
        existing = [n for n in OUTPUTS if (folder / n).exists()]
        if existing and not args.overwrite:
            raise FileExistsError(f"--out {folder}: {', '.join(existing)} exist(s); pass --overwrite to replace")
        folder.mkdir(parents=True, exist_ok=True)
    data = test_set(args.slices, args.seed, args.size, args.coils, args.snr, args.fov)
    masks_info = {}
    for m in masks:
        mk = make_test_mask(m, tuple(data[0]["kspace"].shape[-2:]), data[0]["seed"])
        masks_info[m] = {"kind_acceleration_center_fraction": list(parse_mask(m)), "acs_lines": acs_width(mk),
                         "sampled_fraction_slice0": float(mk.float().mean())}
    cli = sys.argv[1:3] == ["bench", "recon"]
    meta = {"command": "medrecon bench recon " + shlex.join(sys.argv[3:]) if cli else "medrecon.bench.commands.recon.main(...)",
            "description": (f"{args.slices} held-out simulated brain slice(s) (simulator seeds {args.seed}.."
                            f"{args.seed + args.slices - 1}, {args.coils} coils, SNR {args.snr:g}, k-space "
                            f"{tuple(data[0]['kspace'].shape[-2:])} ({'readout-oversampled, as medrecon recon' if args.fov == 'full' else 'readout oversampling removed'}), "
                            f"scored on the {args.size}x{args.size} recon matrix); sample seed {args.sample_seed}; "
                            f"{torch.get_num_threads()} torch thread(s) on {platform.machine()} "
                            f"({os.cpu_count()} CPUs), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."),
            "masks": masks_info, "slices": [d["seed"] for d in data], "threads": torch.get_num_threads(),
            "methods_left_out": skipped}
    for note in skipped:
        print(f"bench recon: left out {note}", file=sys.stderr)
    print(f"bench recon: {len(entries)} rows x {len(masks)} masks on {len(data)} slice(s)", file=sys.stderr)
    done: list[Row] = []
    start = time.perf_counter()

    def on_row(row: Row, i: int, total: int) -> None:
        done.append(row)
        what = (f"{row.psnr:.2f} dB, {row.nfe} NFE, {row.seconds_per_slice:.2f} s/slice" if row.status == "ok"
                else f"{row.status}: {row.note}")
        print(f"[{i}/{total} {time.perf_counter() - start:.0f}s] {row.mask} {label(row)}: {what}", file=sys.stderr,
              flush=True)
        if args.json:
            print(json.dumps(dataclasses.asdict(row)), flush=True)
        if folder is not None:
            write_results(folder, done, meta)

    rows, images = run_rows(entries, masks, data, args.sample_seed, args.device, on_row)
    if folder is not None:
        from medrecon.bench.recon.plots import write_figures

        write_figures(folder, rows, images, data[0]["target"].numpy())
    if not args.json:
        print(format_table(rows))
        for r in rows:
            if r.status != "ok":
                print(f"not run: {r.mask} {label(r)}: {r.status}: {r.note}")
    for g in check_goals(rows):
        print(f"goal {g['goal']} [{g['mask']}]: {verdict(g['met'])}: {g['text']}", file=sys.stderr if args.json else sys.stdout)
    return 1 if any(r.status == "error" for r in rows) else 0
