"""The report of ``medrecon bench recon``: goal verdicts from the measured rows (never adjusted), the
markdown table, and ``bench_recon.{md,json}`` (written atomically, `medrecon.bench.tables`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medrecon.bench.recon.rows import Row, label, parse_mask
from medrecon.bench.tables import write_text

__all__ = ["FAST_NFE", "GOAL_DB", "check_goals", "verdict", "format_table", "write_results"]

FAST_NFE = 50          # goal 1: a sampler at <= 50 NFE ...
GOAL_DB = 0.5          # ... within 0.5 dB PSNR of the best slow sampler


def check_goals(rows: list[Row]) -> list[dict]:
    """Goal verdicts from the measured rows (module docstring); nothing is adjusted."""
    ok = [r for r in rows if r.status == "ok"]
    out = []
    for mask in dict.fromkeys(r.mask for r in ok):
        diff = [r for r in ok if r.mask == mask and r.kind == "diffusion"]
        slow = [r for r in diff if r.nfe is not None and r.nfe > FAST_NFE]
        fast = [r for r in diff if r.nfe is not None and r.nfe <= FAST_NFE]
        if slow and fast:
            bs, bf = max(slow, key=lambda r: r.psnr), max(fast, key=lambda r: r.psnr)
            classical = [r for r in ok if r.mask == mask and r.kind == "classical"]
            context = ""
            if classical:  # context, not part of the verdict: is the slow reference itself any good?
                bc = max(classical, key=lambda r: r.psnr)
                context = f"; best classical: {bc.method} {bc.psnr:.2f} dB"
            out.append({"goal": "fast-vs-slow", "mask": mask, "met": bf.psnr >= bs.psnr - GOAL_DB,
                        "text": f"best <= {FAST_NFE} NFE: {label(bf)} ({bf.nfe} NFE) {bf.psnr:.2f} dB vs best slow "
                                f"{label(bs)} ({bs.nfe} NFE) {bs.psnr:.2f} dB (gap {bs.psnr - bf.psnr:+.2f} dB, "
                                f"allowed {GOAL_DB} dB){context}"})
        else:
            out.append({"goal": "fast-vs-slow", "mask": mask, "met": None,
                        "text": "not measured: needs both a slow (> 50 NFE) and a fast diffusion row"})
        if parse_mask(mask)[1] == 8:
            base = [r for r in ok if r.mask == mask and r.method in ("cg-sense", "l1-wavelet")]
            if len(base) < 2 or not diff:
                out.append({"goal": "above-classical-8x", "mask": mask, "met": None,
                            "text": "not measured: needs cg-sense, l1-wavelet and diffusion rows"})
                continue
            bar = max(r.psnr for r in base)
            below = [r for r in diff if r.psnr <= bar]
            out.append({"goal": "above-classical-8x", "mask": mask, "met": not below,
                        "text": f"{len(diff) - len(below)}/{len(diff)} diffusion rows above max(CG-SENSE, L1-wavelet) "
                                f"= {bar:.2f} dB" + (f"; below: {', '.join(f'{label(r)} ({r.psnr:.2f})' for r in below)}"
                                                     if below else "")})
    return out


def verdict(met) -> str:
    """MET / NOT MET / NOT MEASURED."""
    return {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[met]


def format_table(rows: list[Row]) -> str:
    """The markdown table of the rows that ran."""
    lines = ["| mask | method | solver | DeepCache | NFE | PSNR (dB) | SSIM | NMSE | s/slice |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.status != "ok":
            continue
        lines.append(f"| {r.mask} | {r.method} | {r.solver or '-'} | {r.deepcache if r.deepcache > 1 else '-'} | "
                     f"{r.nfe} | {r.psnr:.2f} | {r.ssim:.4f} | {r.nmse:.4f} | {r.seconds_per_slice:.2f} |")
    return "\n".join(lines)



def write_results(folder: Path, rows: list[Row], meta: dict) -> None:
    """``bench_recon.md`` (command, table, goals, rows not run) and ``bench_recon.json`` (meta, goals, rows)."""
    goals = check_goals(rows)
    other = [r for r in rows if r.status != "ok"]
    md = [f"# medrecon bench recon\n\n`{meta['command']}`\n\n{meta['description']}\n", format_table(rows), "",
          "## Goals", ""] + [f"- **{verdict(g['met'])}** ({g['goal']}, {g['mask']}): {g['text']}" for g in goals]
    if other or meta.get("methods_left_out"):
        md += ["", "## Rows not run", ""] + [f"- {r.mask} {label(r)}: {r.status}: {r.note}" for r in other]
        md += [f"- {note}" for note in meta.get("methods_left_out", [])]
    text = "\n".join(md) + "\n"
    payload = json.dumps({**meta, "goals": goals, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1)
    write_text(folder / "bench_recon.md", text)
    write_text(folder / "bench_recon.json", payload)
