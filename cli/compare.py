"""`medrecon compare`: methods x acceleration factors on one fully sampled fastMRI file.

    medrecon compare INPUT --methods zero-filled,cg-sense --accelerations 4,8 [--mask KIND
        --center-fraction 0.08 --seed 0 --sample-seed N --slices a:b --device cuda]
        [--out DIR] [--overwrite] [-o METHOD.KEY=VALUE | -o KEY=VALUE ...] [--json]

Each (method, R) runs `medrecon.pipeline.reconstruct_file` with a retrospective mask and is
scored against the RSS image.  A table (PSNR/SSIM/NMSE/seconds/NFE) is printed; with ``--out``
the folder receives ``results.csv``, ``results.json`` (the full records), the reconstructions
``recon/<method>_R<R>.h5`` and, when matplotlib is importable, ``images.png`` (middle slice of
every reconstruction with its error map) and ``metrics.png`` (metric vs acceleration).
``-o METHOD.KEY=VALUE`` sets an option of one method; ``-o KEY=VALUE`` of every method having
that option.  A failed run is reported on stderr, the others go on, and the exit code is 1.
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
    p.add_argument("input", help="fully sampled fastMRI .h5 file")
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


def method_options(methods: list[str], pairs: list[str]) -> dict[str, dict[str, str]]:
    """``-o`` pairs -> per-method option dicts, validated against each method's options."""
    import dataclasses

    from medrecon.registry import get_method, resolve_options

    specs = {m: get_method(m) for m in methods}
    fields = {m: {f.name for f in dataclasses.fields(s.options)} for m, s in specs.items()}
    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects [METHOD.]KEY=VALUE, got {pair!r}")
        target, dot, key = key.rpartition(".")
        key = key.replace("-", "_")
        if dot:
            if target not in out:
                raise ValueError(f"--option {pair!r}: {target!r} is not one of --methods")
            out[target][key] = value
        else:
            having = [m for m in methods if key in fields[m]]
            if not having:
                raise ValueError(f"--option {pair!r}: no method in --methods has option {key!r}")
            for m in having:
                out[m][key] = value
    for m, opts in out.items():
        resolve_options(specs[m], opts)
    return out


def _row(rec: dict) -> dict:
    m, mask = rec["metrics"] or {}, rec["mask"]
    return {"method": rec["method"], "acceleration": mask["acceleration"],
            "center_fraction": mask["center_fraction"],
            "sampled_fraction": round(mask["sampled_fraction"], 4),
            **{k: m.get(k) for k in ("psnr", "ssim", "nmse")},
            "seconds": rec["seconds"], "seconds_per_slice": rec["seconds_per_slice"],
            "nfe": rec["nfe"]}


def _publish(dest: Path, write, overwrite: bool) -> None:
    """``write(tmp)`` then publish to ``dest`` (`medrecon.datasets.publish`: no-clobber unless
    ``overwrite``; the temp is removed on error)."""
    from medrecon.datasets.publish import publish, temp_path

    tmp = temp_path(dest)
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, dest, overwrite)


def write_tables(folder: Path, rows: list[dict], records: list[dict], meta: dict,
                 overwrite: bool = True) -> None:
    """``results.csv`` and ``results.json``; files written name the input by its file name."""
    from medrecon.datasets.publish import printable

    def table(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)

    named = [{**r, "file": printable(Path(r["file"]).name)} if r.get("file") else r
             for r in records]
    meta = {**meta, "file": printable(Path(meta["file"]).name)} if meta.get("file") else meta
    text = json.dumps({**meta, "results": named}, indent=2)
    _publish(folder / "results.csv", table, overwrite)
    _publish(folder / "results.json", lambda tmp: tmp.write_text(text), overwrite)


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
    _publish(folder / "images.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"),
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
    _publish(folder / "metrics.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"),
             overwrite)
    plt.close(fig)
    return [folder / "images.png", folder / "metrics.png"]


def run(args) -> int:
    import h5py

    from medrecon.datasets.fastmri import FastMRIFile
    from medrecon.pipeline import MaskSpec, parse_slices, reconstruct_file

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    accs = [_number(a) for a in args.accelerations.split(",") if a.strip()]
    if not methods or not accs:
        raise ValueError("--methods and --accelerations must each name at least one value")
    if not 0 < args.center_fraction < 1:
        raise ValueError(f"--center-fraction must be in (0, 1), got {args.center_fraction}")
    options = method_options(methods, args.option)
    with FastMRIFile(args.input) as f:
        if f.mask is not None:
            raise ValueError(f"{args.input}: has its own mask (undersampled test data); compare "
                             "needs fully sampled k-space")
        rows_sel = parse_slices(args.slices, f.num_slices)
    folder = Path(args.out) if args.out else None
    if folder is not None:
        from medrecon.datasets.publish import (probe_writable, refuse_input_overlap,
                                               remove_stale_temps)
        outputs = [folder / n for n in ("results.json", "results.csv", "images.png",
                                        "metrics.png")]
        refuse_input_overlap([*outputs, folder / "recon"], [args.input])
        clash = [o for o in outputs if o.exists()]
        if clash and not args.overwrite:
            raise FileExistsError(f"{clash[0]} exists; pass --overwrite")
        (folder / "recon").mkdir(parents=True, exist_ok=True)
        for d in (folder, folder / "recon"):
            remove_stale_temps(d)
            probe_writable(d)
    progress = not args.quiet and sys.stderr.isatty()
    rows, records, images, failed = [], [], {}, 0
    middle = len(rows_sel) // 2
    for acc in accs:
        mask = MaskSpec(args.mask, acc, args.center_fraction, args.seed)
        for m in methods:
            out = folder / "recon" / f"{m}_R{acc}.h5" if folder else None
            try:
                rec = reconstruct_file(args.input, m, mask, args.slices, out, args.overwrite,
                                       progress, args.device, seed=args.sample_seed, **options[m])
            except (ValueError, OSError, KeyError, RuntimeError) as exc:
                failed += 1
                print(f"medrecon compare: error: {m} R={acc}: {exc}", file=sys.stderr)
                continue
            records.append(rec)
            rows.append(_row(rec))
            if args.json:
                print(json.dumps(rec), flush=True)
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
