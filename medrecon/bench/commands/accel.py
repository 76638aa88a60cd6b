"""``medrecon bench accel``: options and output of the acceleration table (`medrecon.bench.accel`)."""
from __future__ import annotations

import shlex
import sys
import time

import torch

HELP = "DDNM/DDS speed-ups (DeepCache, int8, bf16, ParaDiGMS, distilled) vs the 50-step baseline, 4x and 8x"
DESCRIPTION = ("Acceleration table: PSNR/SSIM, NFE, seconds per slice and speed-up over the 50-step float32 "
               "baseline for DDNM and DDS on held-out fastMRI-size simulated slices (docs/accel.md).")

QUICK = {"slices": 1, "size": 48, "coils": 4, "steps": 4, "masks": "equispaced_fraction:4:0.2", "cache": 2}


def add_arguments(p) -> None:
    p.add_argument("--methods", default="ddnm,dds", help="comma-separated VP methods (default ddnm,dds)")
    p.add_argument("--masks", default="4x,8x", help="4x, 8x (fastMRI equispaced_fraction, centre 0.08 / 0.04) or "
                   "KIND:R:CENTER_FRACTION, comma-separated")
    p.add_argument("--slices", type=int, default=2, help="held-out test slices (simulator seeds from --seed)")
    p.add_argument("--seed", type=int, default=1000, help="simulator seed of the first slice (>= 1000)")
    p.add_argument("--size", type=int, default=320, help="recon matrix (square; k-space 2 size x size)")
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="steps of the baseline and of every non-distilled row")
    p.add_argument("--cache", type=int, default=3, help="DeepCache interval of the DeepCache rows")
    p.add_argument("--variants", default=None, help="comma-separated rows to run (baseline, deepcache, int8, bf16, "
                   "paradigms, distilled, int8+deepcache, paradigms+int8; default all; the baseline always runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the table (markdown, with the command) to this file")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: 1 slice, 48x48, 4 coils, 4 steps, 4x "
                   "(explicit flags still win)")


def main(args) -> int:
    import argparse
    from pathlib import Path

    from medrecon.bench.accel import format_table, run
    from medrecon.bench.recon.rows import split_list

    if args.quick:
        ref = argparse.ArgumentParser()
        add_arguments(ref)
        defaults = vars(ref.parse_args([]))
        for key, value in QUICK.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    for what, v in (("--slices", args.slices), ("--steps", args.steps), ("--cache", args.cache)):
        if v < 1:
            raise ValueError(f"{what}: expected an integer >= 1, got {v}")

    def on_row(r, i, n):
        what = f"{r.psnr:.2f} dB, {r.seconds:.2f} s/slice" if r.status == "ok" else f"{r.status}: {r.note}"
        print(f"[{i}/{n}] {r.mask} {r.method} {r.variant}: {what}", file=sys.stderr, flush=True)

    rows, calib = run(split_list(args.methods), split_list(args.masks), args.slices, args.size, args.coils,
                      args.steps, args.cache, args.seed, args.device, on_row,
                      None if args.variants is None else split_list(args.variants))
    cmd = "medrecon bench accel " + shlex.join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "accel"] else \
        "medrecon.bench.commands.accel.main(...)"
    lines = [format_table(rows), "",
             f"{args.slices} slice(s) {args.size}x{args.size}, {args.coils} coils, {torch.get_num_threads()} torch "
             f"thread(s), device {args.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    lines += [f"int8 calibration of {m} (once per process, not in s/slice): {s:.1f} s" for m, s in calib.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"`{cmd}`\n\n{text}\n")
    return 1 if any(r.status == "error" for r in rows) else 0
