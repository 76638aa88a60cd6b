"""``medrecon bench ct``: options and outputs of the low-dose CT denoising benchmark
(`medrecon.bench.ct`; the CT operator timings are ``medrecon bench ct-operators``)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch

from medrecon.bench import ct as ct_module
from medrecon.bench.ct import DEFAULT_SOLVERS, format_markdown, run_bench
from medrecon.bench.ct_figures import save_figures
from medrecon.bench.tables import write_text

HELP = "low-dose CT denoising: FBP, pixel DDPM and latent cold diffusion"
DESCRIPTION = (ct_module.__doc__ or HELP).split("\n\n")[0]


def add_arguments(p) -> None:
    p.add_argument("--pixel", required=True, help="ct-pixel-ddpm checkpoint directory")
    p.add_argument("--latent", required=True,
                   help="ct-latent-cold run directory (autoencoder/ + latent/)")
    p.add_argument("--out", required=True, help="folder for bench_ct.md/.json and the figures")
    p.add_argument("--n-test", type=int, default=8, help="held-out test slices")
    p.add_argument("--test-seed", type=int, default=1,
                   help="simulate_pairs seed (volume seeds test_seed * 1000 + v; >= 1)")
    p.add_argument("--size", type=int, default=None, help="default: the checkpoints' training size")
    p.add_argument("--i0", type=float, default=None, help="default: the training data's I0")
    p.add_argument("--sigma-e", type=float, default=None)
    p.add_argument("--pixel-solvers", nargs="+", default=list(DEFAULT_SOLVERS),
                   help="solver:steps[:key=value...] entries (default: %(default)s)")
    p.add_argument("--cold-steps", type=int, default=None, help="default: T (all cold steps)")
    p.add_argument("--train-steps", type=int, default=5,
                   help="training steps timed here per network for the per-step ratio (0: skip)")
    p.add_argument("--figure-slices", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the pixel DDPM")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--quiet", action="store_true")


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    targets = [out / n for n in ("bench_ct.md", "bench_ct.json", "bench_ct_grid.png", "bench_ct_speed.png")]
    if not args.overwrite and any(t.exists() for t in targets):
        raise FileExistsError(f"{out}: bench outputs exist; pass --overwrite to replace them")
    if args.n_test < 1:
        raise ValueError(f"--n-test must be >= 1, got {args.n_test}")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "bench_ct.partial.json"
    done: list[dict] = []

    def on_row(row):  # a long run leaves its finished rows behind if stopped
        done.append(row)
        write_text(partial, json.dumps(done, indent=1))
    res = run_bench(args.pixel, args.latent, n_test=args.n_test, test_seed=args.test_seed, size=args.size,
                    i0=args.i0, sigma_e=args.sigma_e, pixel_solvers=args.pixel_solvers,
                    cold_steps=args.cold_steps, train_steps=args.train_steps, seed=args.seed,
                    device=args.device, progress=not args.quiet, on_row=on_row)
    partial.unlink(missing_ok=True)
    table = format_markdown(res)
    command = "medrecon bench ct " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["bench", "ct"] else "medrecon bench ct (called from Python)"
    write_text(out / "bench_ct.md", f"{table}\n\nCommand: `{command}`\n")
    write_text(out / "bench_ct.json", json.dumps({k: v for k, v in res.items() if k != "_images"}, indent=1))
    save_figures(res, out, args.figure_slices)
    print(table)
    return 0
