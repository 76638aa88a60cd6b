"""The figures of ``medrecon bench recon``: PSNR vs NFE per mask, and the image grid (best row of each
method on the first test slice, with error maps; `medrecon.bench.figures.draw_image_errors`).
matplotlib is imported only when a figure is drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medrecon.bench.figures import draw_image_errors, pyplot, save_png
from medrecon.bench.recon.report import FAST_NFE
from medrecon.bench.recon.rows import Row, label

__all__ = ["write_figures", "plot_psnr_nfe", "plot_images"]


def write_figures(folder: Path, rows: list[Row], images: dict, target: np.ndarray) -> None:
    """`plot_psnr_nfe` and `plot_images`."""
    plot_psnr_nfe(folder, rows)
    plot_images(folder, rows, images, target)


def plot_psnr_nfe(folder: Path, rows: list[Row]) -> None:
    """``bench_recon_psnr_nfe.png``: PSNR vs NFE per mask (classical methods as horizontal lines)."""
    plt = pyplot()
    ok = [r for r in rows if r.status == "ok"]
    masks = list(dict.fromkeys(r.mask for r in ok))
    if not masks:
        return
    fig, axes = plt.subplots(1, len(masks), figsize=(5.2 * len(masks), 4.6), squeeze=False)
    for ax, mask in zip(axes[0], masks):
        rs = [r for r in ok if r.mask == mask]
        for r in rs:
            if r.kind == "classical":
                ax.axhline(r.psnr, ls="--", lw=1, color="gray")
                ax.text(0.01, r.psnr, r.method, fontsize=6, va="bottom", color="gray",
                        transform=ax.get_yaxis_transform())
        diff = [r for r in rs if r.kind != "classical"]
        colors = plt.get_cmap("tab20").colors
        for j, (meth, solver, dc) in enumerate(dict.fromkeys((r.method, r.solver, r.deepcache) for r in diff)):
            pts = sorted((r.nfe, r.psnr) for r in diff if (r.method, r.solver, r.deepcache) == (meth, solver, dc))
            ax.plot(*zip(*pts), marker="os^vDP*X"[j % 8], ms=3, lw=1, ls=":" if dc > 1 else "-",
                    color=colors[j % 20], label=f"{meth} {solver}".strip() + (f" DC{dc}" if dc > 1 else ""))
        ax.axvline(FAST_NFE, color="k", lw=0.5)
        ax.set_xscale("log")
        nfes = [r.nfe for r in diff if r.nfe] or [1]
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
                 if min(nfes) / 2 <= t <= max(nfes) * 2]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE per slice")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(mask, fontsize=9)
        if diff:
            ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save_png(fig, folder / "bench_recon_psnr_nfe.png", dpi=110)
    plt.close(fig)


def plot_images(folder: Path, rows: list[Row], images: dict, target: np.ndarray) -> None:
    """``bench_recon_images.png``: per mask, the first slice of the best row of each method (``images``:
    row index -> magnitude) and its error map against ``target``."""
    plt = pyplot()
    ok = [r for r in rows if r.status == "ok"]
    masks = list(dict.fromkeys(r.mask for r in ok))
    if not masks:
        return
    index = {id(r): i for i, r in enumerate(rows)}
    cols = {}
    for mask in masks:
        rs = [r for r in ok if r.mask == mask and index[id(r)] in images]
        best: dict[str, Row] = {}
        for r in rs:
            if r.method not in best or r.psnr > best[r.method].psnr:
                best[r.method] = r
        cols[mask] = list(best.values())
    n = 1 + max(len(c) for c in cols.values())
    fig, axes = plt.subplots(2 * len(masks), n, figsize=(1.9 * n, 3.9 * len(masks)), squeeze=False)
    for i, mask in enumerate(masks):
        panels = [(f"{label(r)}\n{r.nfe} NFE, {r.psnr:.1f} dB", images[index[id(r)]]) for r in cols[mask]]
        draw_image_errors(axes[2 * i], axes[2 * i + 1], target, panels, reference_title=f"reference\n{mask}",
                          fontsize=6, reference_fontsize=7)
    fig.tight_layout()
    save_png(fig, folder / "bench_recon_images.png", dpi=80)
    plt.close(fig)
