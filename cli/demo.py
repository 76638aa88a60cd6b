"""`medrecon demo`: make the built-in demo file and reconstruct it with the classical methods
and one fast diffusion method on the shipped prior.

The README's "main job on a built-in demo": a 3-slice, 8-coil fastMRI-format phantom is written
(to ``--out`` or a temporary folder), undersampled 4x (fastMRI equispaced_fraction mask, 8%
centre) and reconstructed by each method; a table of PSNR / SSIM / NMSE against the fully
sampled RSS image and the time is printed, and the reconstructions are written next to the data.
After the classical rows comes DDNM (range-null-space projection + DDIM) with 20 network
evaluations on the builtin ``brain128-vp`` prior (``medrecon.builtin_priors``; no download),
unless ``--no-diffusion``.  (DDNM rather than DDS: on this phantom, 4x, 20 NFE, DDNM gives 32.0 dB
and DDS 22.1 dB with the shipped prior -- docs/priors.md.)
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

METHODS = ("zero-filled", "cg-sense", "spirit-cg", "l1-wavelet")
DIFFUSION = (("ddnm", {"steps": 20}),)  # (method, options): fast rows on the shipped prior


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the classical methods on a built-in demo volume")
    p.add_argument("--out", default=None, help="folder to keep the demo data and results in")
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--no-diffusion", action="store_true",
                   help="skip the diffusion row (DDNM, 20 NFE, builtin prior brain128-vp)")
    p.add_argument("--json", action="store_true", help="print the JSON records instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from medrecon.datasets.demo import make_demo_file
    from medrecon.metrics import fmt_metric
    from medrecon.pipeline import MaskSpec, reconstruct_file
    from medrecon.registry import get_method

    for name in args.methods:
        get_method(name)
    with tempfile.TemporaryDirectory(prefix="medrecon-demo-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "demo_multicoil.h5"
        if not data.exists():
            make_demo_file(data)
        acc = int(args.acceleration) if float(args.acceleration).is_integer() else args.acceleration
        mask = MaskSpec("equispaced_fraction", acc, 0.08, 0)
        rows = []
        runs = [(name, {}) for name in args.methods]
        runs += [] if getattr(args, "no_diffusion", False) else list(DIFFUSION)
        for name, options in runs:
            out = folder / f"recon_{name}.h5" if args.out else None
            rec = reconstruct_file(data, name, mask, out=out, overwrite=True,
                                   progress=sys.stderr.isatty(), seed=0, **options)
            rows.append(rec)
            if args.json:
                print(json.dumps(rec), flush=True)
        if not args.json:
            print(f"demo: {data.name} (3 slices, 8 coils, 256x128 k-space, 128x128 recon), "
                  f"{acc}x equispaced_fraction mask, 8% centre")
            print(f"{'method':<12} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>8} {'s/slice':>8} {'NFE':>5}")
            for r in rows:
                m = r["metrics"]
                print(f"{r['method']:<12} {fmt_metric(m['psnr'], '.2f', 8)} "
                      f"{fmt_metric(m['ssim'], '.4f', 7)} {fmt_metric(m['nmse'], '.4f', 8)} "
                      f"{r['seconds_per_slice']:8.3f} {r.get('nfe', 0):>5}")
            if args.out:
                print(f"data and reconstructions in {folder}")
    return 0
