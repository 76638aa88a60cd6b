"""The figures of ``medrecon bench ct``: the image grid (NDCT, LDCT and every method with |error|
maps in HU) and RMSE vs time per slice, from the result of `medrecon.bench.ct.run_bench`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medrecon.bench.figures import pyplot, save_png

__all__ = ["save_figures"]


def save_figures(res: dict, out: Path, n_slices: int = 2) -> list[Path]:
    """``bench_ct_grid.png`` (images + |error| maps) and ``bench_ct_speed.png``."""
    plt = pyplot()
    imgs = res["_images"]
    names = list(imgs)
    ref = imgs["NDCT"]
    k = min(n_slices, ref.shape[0])
    fig, axes = plt.subplots(2 * k, len(names), figsize=(1.7 * len(names), 3.5 * k), squeeze=False)
    for s in range(k):
        for j, name in enumerate(names):
            ax, ex = axes[2 * s, j], axes[2 * s + 1, j]
            ax.imshow(imgs[name][s], cmap="gray", vmin=-160, vmax=240)
            err = np.abs(np.nan_to_num(imgs[name][s], nan=0.0) - ref[s])
            ex.imshow(err, cmap="magma", vmin=0, vmax=150)
            if s == 0:
                ax.set_title(name.replace("pixel DDPM ", "pixel\n").replace("latent cold diffusion", "latent cold\ndiffusion"),
                             fontsize=6)
            for a in (ax, ex):
                a.set_xticks([])
                a.set_yticks([])
        axes[2 * s, 0].set_ylabel(f"slice {s}\nW400 L40", fontsize=6)
        axes[2 * s + 1, 0].set_ylabel("|error| HU\n0..150", fontsize=6)
    fig.tight_layout()
    grid = out / "bench_ct_grid.png"
    save_png(fig, grid, dpi=130)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in res["rows"]:
        if r["method"].startswith("FBP"):
            ax.axhline(r["rmse_hu"], color="gray", ls="--", lw=1, label="FBP (LDCT)")
            continue
        ax.scatter(r["s_per_slice"], min(r["rmse_hu"], 400), label=r["method"], s=25)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per slice (log)")
    ax.set_ylabel("RMSE in body (HU, capped at 400)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    speed = out / "bench_ct_speed.png"
    save_png(fig, speed, dpi=130)
    plt.close(fig)
    return [grid, speed]
