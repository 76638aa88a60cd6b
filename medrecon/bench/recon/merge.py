"""``medrecon bench recon --merge A.json B.json ... --out DIR``: one table, goal check and PSNR-vs-NFE
figure from the ``bench_recon.json`` of several runs on the same test slices.

Why: the slow samplers (N = 1000) and the fast grid are run as separate processes (two CPU cores,
or two machines); the goals compare rows across them (goal 1: the best fast sampler against the
best slow one).  Runs are merged only when they scored the same slices at the same recon size, so
the rows stay paired; a (mask, method, solver, DeepCache, options) row present in several runs is
refused rather than picked silently.  Nothing is re-run: the image grid needs the images and is
not drawn (each run's own ``bench_recon_images.png`` stays where it is).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medrecon.bench.recon.plots import plot_psnr_nfe
from medrecon.bench.recon.report import check_goals, format_table, verdict, write_results
from medrecon.bench.recon.rows import Row, label

__all__ = ["load_rows", "merge_runs", "main_merge"]

_FIELDS = {f.name for f in dataclasses.fields(Row)}


def load_rows(path: str | Path) -> tuple[list[Row], dict]:
    """(rows, meta) of one ``bench_recon.json`` (a file, or the ``--out`` folder holding it)."""
    p = Path(path)
    p = p / "bench_recon.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"--merge: {p} does not exist (expected a bench_recon.json or its folder)")
    try:
        data = json.loads(p.read_text())
        rows = [Row(**{k: v for k, v in r.items() if k in _FIELDS}) for r in data["rows"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"--merge: {p} is not a bench_recon.json ({exc})") from None
    return rows, {k: v for k, v in data.items() if k not in ("rows", "goals")}


def _key(r: Row) -> tuple:
    return (r.mask, r.method, r.solver, r.deepcache, json.dumps(r.options, sort_keys=True, default=str))


def merge_runs(paths: list[str | Path]) -> tuple[list[Row], dict]:
    """The rows of every run, in order, and a merged meta (commands and descriptions of each run)."""
    if len(paths) < 2:
        raise ValueError(f"--merge: expected at least two bench_recon.json files, got {len(paths)}")
    rows: list[Row] = []
    metas = []
    seen: dict[tuple, str] = {}
    for path in paths:
        rs, meta = load_rows(path)
        if metas and meta.get("slices") != metas[0].get("slices"):
            raise ValueError(f"--merge: {path} scored slices {meta.get('slices')}, {paths[0]} scored "
                             f"{metas[0].get('slices')}: only runs on the same test slices can be compared")
        for r in rs:
            k = _key(r)
            if k in seen and r.status == "ok":
                raise ValueError(f"--merge: the row {r.mask} {label(r)} {r.options} is in both {seen[k]} and {path}")
            if r.status == "ok":
                seen[k] = str(path)
        rows += rs
        metas.append(meta)
    meta = {"command": " ; ".join(m.get("command", "?") for m in metas) + " ; medrecon bench recon --merge "
            + " ".join(str(p) for p in paths),
            "description": "Merged from: " + " | ".join(m.get("description", "") for m in metas),
            "masks": {k: v for m in metas for k, v in m.get("masks", {}).items()},
            "slices": metas[0].get("slices"), "threads": [m.get("threads") for m in metas],
            "methods_left_out": [n for m in metas for n in m.get("methods_left_out", [])], "merged_from": [str(p) for p in paths]}
    return rows, meta


def main_merge(paths: list[str], out: str | None, overwrite: bool = False) -> int:
    """Write the merged ``bench_recon.{md,json}`` and ``bench_recon_psnr_nfe.png`` to ``out``; print the goals."""
    rows, meta = merge_runs(paths)
    if out is not None:
        folder = Path(out)
        names = ("bench_recon.md", "bench_recon.json", "bench_recon_psnr_nfe.png")
        existing = [n for n in names if (folder / n).exists()]
        if existing and not overwrite:
            raise FileExistsError(f"--out {folder}: {', '.join(existing)} exist(s); pass --overwrite to replace")
        folder.mkdir(parents=True, exist_ok=True)
        write_results(folder, rows, meta)
        plot_psnr_nfe(folder, rows)
    print(format_table(rows))
    for g in check_goals(rows):
        print(f"goal {g['goal']} [{g['mask']}]: {verdict(g['met'])}: {g['text']}")
    return 0
