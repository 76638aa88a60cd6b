"""`medrecon compare`: methods x acceleration factors on one fully sampled fastMRI file (MRI),
or CT methods on one CT scan.

    medrecon compare INPUT --methods zero-filled,cg-sense --accelerations 4,8 [--mask KIND
        --center-fraction 0.08 --seed 0 --sample-seed N --slices a:b --device cuda]
        [--out DIR] [--overwrite] [-o METHOD.KEY=VALUE | -o KEY=VALUE ...] [--json]

Each (method, R) runs `medrecon.pipeline.reconstruct_file` with a retrospective mask and is
scored against the RSS image.  A table (PSNR/SSIM/NMSE/seconds/NFE) is printed; with ``--out``
the folder receives ``results.csv``, ``results.json`` (the full records), the reconstructions
``recon/<method>_R<R>.h5`` and, when matplotlib is importable, ``images.png`` (middle slice of
every reconstruction with its error map) and ``metrics.png`` (metric vs acceleration).
``-o METHOD.KEY=VALUE`` sets an option of one method; ``-o KEY=VALUE`` of every method having
that option (parsed once, `medrecon.options`).  A failed run is reported on stderr, the others
go on, and the exit code is 1.  CT methods (``--methods fbp,pixel-ddpm``; not mixed with MRI
ones) run once each on a DICOM CT series or sinogram file, scored in HU (RMSE, PSNR, SSIM) against
the scan's reference; ``--out`` then gets the tables and ``recon/<method>.h5``, no figures.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

COLUMNS = ("method", "acceleration", "center_fraction", "sampled_fraction", "psnr", "ssim",
           "nmse", "seconds", "seconds_per_slice", "nfe")


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare methods across acceleration factors")
    p.add_argument("input", help="fully sampled fastMRI .h5 file (CT methods: a CT scan)")
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--accelerations", default="4,8", help="comma-separated factors (4,8)")
    p.add_argument("--mask", default="equispaced_fraction", help="mask kind")
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--seed", "--mask-seed", type=int, default=0, help="mask seed")
    p.add_argument("--sample-seed", type=int, default=None, help="diffusion sampler seed")
    p.add_argument("--slices", default=None, help="slice range 'a:b' or one index")
    p.add_argument("--out", default=None, help="folder for results, reconstructions, figures")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--option", "-o", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method option, repeatable")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--json", action="store_true", help="print one JSON record per run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _number(text: str):
    v = float(text)
    if v < 1:
        raise ValueError(f"accelerations must be >= 1, got {text}")
    return int(v) if v.is_integer() else v


def method_options(methods: list[str], pairs: list[str]) -> dict[str, object]:
    """``-o [METHOD.]KEY=VALUE`` pairs -> each method's options dataclass, parsed and resolved
    once (`medrecon.options`)."""
    from medrecon.options import method_pairs, resolve

    return {m: resolve(m, opts) for m, opts in method_pairs(pairs, methods).items()}


def _row(rec: dict) -> dict:
    m, mask = rec["metrics"] or {}, rec["mask"]
    return {"method": rec["method"], "acceleration": mask["acceleration"],
            "center_fraction": mask["center_fraction"],
            "sampled_fraction": round(mask["sampled_fraction"], 4),
            **{k: m.get(k) for k in ("psnr", "ssim", "nmse")},
            "seconds": rec["seconds"], "seconds_per_slice": rec["seconds_per_slice"],
            "nfe": rec["nfe"]}


def write_tables(folder: Path, rows: list[dict], records: list[dict], meta: dict,
                 overwrite: bool = True, columns: tuple[str, ...] = COLUMNS) -> None:
    """``results.csv`` and ``results.json``; files written name the input by its file name."""
    from medrecon.datasets.publish import printable, write_published

    def table(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    named = [{**r, "file": printable(Path(r["file"]).name)} if r.get("file") else r
             for r in records]
    meta = {**meta, "file": printable(Path(meta["file"]).name)} if meta.get("file") else meta
    text = json.dumps({**meta, "results": named}, indent=2)
    write_published(folder / "results.csv", table, overwrite)
    write_published(folder / "results.json", lambda tmp: tmp.write_text(text), overwrite)


def _print_table(rows: list[dict]) -> None:
    from medrecon.metrics import fmt_metric

    print(f"{'method':<14} {'R':>5} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>8} {'seconds':>8} "
          f"{'NFE':>5}")
    for r in rows:
        print(f"{r['method']:<14} {r['acceleration']:>5} {fmt_metric(r['psnr'], '.2f', 8)} "
              f"{fmt_metric(r['ssim'], '.4f', 7)} {fmt_metric(r['nmse'], '.4f', 8)} "
              f"{r['seconds']:8.2f} {r['nfe']:>5}")


def reference_slice(path, index: int):
    """The fully sampled RSS image of slice ``index`` at the recon matrix (as scored)."""
    from medrecon.datasets.fastmri import FastMRIFile, center_crop
    from medrecon.physics.coils import rss
    from medrecon.physics.fft import ifft2c

    with FastMRIFile(path) as f:
        k = f.read_slice(index)["kspace"]
        k = k if f.is_multicoil else k.unsqueeze(0)
        return center_crop(rss(ifft2c(k)), f.recon_size).numpy()


def write_figures(folder: Path, rows: list[dict], images: dict, ref,
                  overwrite: bool = True) -> list[Path]:
    """``images.png`` (reconstructions + error maps per R) and ``metrics.png``."""
    import matplotlib

    from medrecon.datasets.publish import write_published

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(r["method"] for r in rows))
    accs = list(dict.fromkeys(r["acceleration"] for r in rows))
    vmax, n = float(ref.max()), len(methods) + 1
    fig, axes = plt.subplots(2 * len(accs), n, figsize=(2.2 * n, 4.4 * len(accs)), squeeze=False)
    for i, acc in enumerate(accs):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(ref, cmap="gray", vmin=0, vmax=vmax)
        top[0].set_title("reference", fontsize=8)
        for j, m in enumerate(methods, 1):
            img = images.get((m, acc))
            if img is None:
                continue
            top[j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
            top[j].set_title(f"{m} R={acc}", fontsize=8)
            bottom[j].imshow(np.abs(img - ref), cmap="inferno", vmin=0, vmax=0.2 * vmax)
            bottom[j].set_title("|error| (0-20% of max)", fontsize=8)
        for ax in (*top, *bottom):
            ax.axis("off")
    fig.tight_layout()
    write_published(folder / "images.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"),
             overwrite)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key in zip(axes, ("psnr", "ssim", "nmse")):
        for m in methods:
            pts = [(r["acceleration"], r[key]) for r in rows if r["method"] == m]
            ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_xticks(accs)
        ax.set_xlabel("acceleration R")
        ax.set_title(key.upper())
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_published(folder / "metrics.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"),
             overwrite)
    plt.close(fig)
    return [folder / "images.png", folder / "metrics.png"]


def _modality(methods: list[str]) -> str:
    """"mri" or "ct": the one modality of ``methods`` (mixing them is a usage error)."""
    from medrecon.registry import get_method

    kinds = {get_method(m).modality for m in methods}
    if len(kinds) > 1:
        raise ValueError(f"--methods {','.join(methods)} mixes MRI and CT methods; compare "
                         "methods of one modality on one input")
    return kinds.pop()


def _prepare_folder(args, names: tuple[str, ...]) -> Path | None:
    """``--out`` before any work: never an input, no clobbering without ``--overwrite``,
    ``recon/`` made, stale temps removed, writability probed."""
    if not args.out:
        return None
    from medrecon.datasets.publish import probe_writable, refuse_input_overlap, remove_stale_temps

    folder = Path(args.out)
    outputs = [folder / n for n in names]
    refuse_input_overlap([*outputs, folder / "recon"], [args.input])
    clash = [o for o in outputs if o.exists()]
    if clash and not args.overwrite:
        raise FileExistsError(f"{clash[0]} exists; pass --overwrite")
    (folder / "recon").mkdir(parents=True, exist_ok=True)
    for d in (folder, folder / "recon"):
        remove_stale_temps(d)
        probe_writable(d)
    return folder


def _one_run(args, method: str, mask, out, opts, label: str) -> dict | None:
    """One `reconstruct_file` run (its record printed with ``--json``); a failure is reported
    on stderr as ``label: error`` and gives None."""
    from medrecon.pipeline import reconstruct_file

    progress = not args.quiet and sys.stderr.isatty()
    try:
        rec = reconstruct_file(args.input, method, mask, args.slices, out, args.overwrite,
                               progress, args.device, seed=args.sample_seed, options=opts)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        print(f"medrecon compare: error: {label}: {exc}", file=sys.stderr)
        return None
    if args.json:
        print(json.dumps(rec), flush=True)
    return rec


CT_COLUMNS = ("method", "rmse_hu", "psnr", "ssim", "seconds", "seconds_per_slice", "nfe")


def _run_ct(args, methods: list[str], options: dict) -> int:
    """CT methods on one CT scan (DICOM CT series or sinogram file): one run per method (the
    accelerations and mask flags do not apply), scored in HU against the scan's reference;
    ``--out`` receives results.csv / results.json and ``recon/<method>.h5`` (no figures)."""
    from medrecon.metrics import fmt_metric

    folder = _prepare_folder(args, ("results.json", "results.csv"))
    rows, records, failed = [], [], 0
    for m in methods:
        rec = _one_run(args, m, None, folder / "recon" / f"{m}.h5" if folder else None,
                       options[m], m)
        if rec is None:
            failed += 1
            continue
        records.append(rec)
        mets = rec["metrics"] or {}
        rows.append({"method": m, **{k: mets.get(k) for k in ("rmse_hu", "psnr", "ssim")},
                     **{k: rec[k] for k in ("seconds", "seconds_per_slice", "nfe")}})
    if not args.json:
        print(f"{'method':<22} {'RMSE HU':>8} {'PSNR dB':>8} {'SSIM':>7} {'seconds':>8} {'NFE':>5}")
        for r in rows:
            print(f"{r['method']:<22} {fmt_metric(r['rmse_hu'], '.1f', 8)} "
                  f"{fmt_metric(r['psnr'], '.2f', 8)} {fmt_metric(r['ssim'], '.4f', 7)} "
                  f"{r['seconds']:8.2f} {r['nfe']:>5}")
    if folder is not None and rows:
        meta = {"file": str(args.input), "slices": records[0]["slices"],
                "sample_seed": args.sample_seed}
        write_tables(folder, rows, records, meta, args.overwrite, columns=CT_COLUMNS)
        print(f"results in {folder}", file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0


def run(args) -> int:
    import h5py

    from medrecon.datasets.fastmri import FastMRIFile
    from medrecon.inputs import parse_slices
    from medrecon.pipeline import MaskSpec

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    accs = [_number(a) for a in args.accelerations.split(",") if a.strip()]
    if not methods or not accs:
        raise ValueError("--methods and --accelerations must each name at least one value")
    if not 0 < args.center_fraction < 1:
        raise ValueError(f"--center-fraction must be in (0, 1), got {args.center_fraction}")
    options = method_options(methods, args.option)
    if _modality(methods) == "ct":
        return _run_ct(args, methods, options)
    with FastMRIFile(args.input) as f:
        if f.mask is not None:
            raise ValueError(f"{args.input}: has its own mask (undersampled test data); compare "
                             "needs fully sampled k-space")
        rows_sel = parse_slices(args.slices, f.num_slices)
    folder = _prepare_folder(args, ("results.json", "results.csv", "images.png", "metrics.png"))
    rows, records, images, failed = [], [], {}, 0
    middle = len(rows_sel) // 2
    for acc in accs:
        mask = MaskSpec(args.mask, acc, args.center_fraction, args.seed)
        for m in methods:
            out = folder / "recon" / f"{m}_R{acc}.h5" if folder else None
            rec = _one_run(args, m, mask, out, options[m], f"{m} R={acc}")
            if rec is None:
                failed += 1
                continue
            records.append(rec)
            rows.append(_row(rec))
            if out is not None:
                with h5py.File(out, "r") as fh:
                    images[(m, acc)] = fh["reconstruction"][middle]
    if not args.json:
        _print_table(rows)
    if folder is not None and rows:
        meta = {"file": str(args.input), "mask": args.mask, "center_fraction":
                args.center_fraction, "seed": args.seed, "sample_seed": args.sample_seed,
                "slices": [rows_sel.start, rows_sel.stop], "middle_slice": rows_sel.start + middle}
        write_tables(folder, rows, records, meta, args.overwrite)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("compare: matplotlib is not installed; figures skipped "
                  "(pip install matplotlib)", file=sys.stderr)
        else:
            ref = reference_slice(args.input, rows_sel.start + middle)
            write_figures(folder, rows, images, ref, args.overwrite)
        print(f"results in {folder}", file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0
