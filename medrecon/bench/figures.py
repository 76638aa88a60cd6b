"""Figure plumbing of the benchmarks (and of ``medrecon compare``): a headless pyplot, the
reference / image / error-map grid, and PNGs written atomically (`medrecon.datasets.publish`).
matplotlib is imported only when a figure is drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from medrecon.datasets.publish import write_published

__all__ = ["pyplot", "draw_image_errors", "save_png"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_image_errors(top, bottom, reference: np.ndarray, panels: Iterable[tuple[str, Optional[np.ndarray]]],
                      *, reference_title: str = "reference", fontsize: float = 8,
                      reference_fontsize: Optional[float] = None) -> None:
    """One block of an image grid on two rows of axes.

    ``top[0]``: the reference (gray, 0 .. its max).  Column j = 1, 2, ... for each
    ``(title, image)`` of ``panels``: the image in ``top[j]`` on the reference's scale and
    ``|image - reference|`` in ``bottom[j]`` (inferno, 0 .. 20 % of the reference's max); an
    image None leaves its column blank.  Every axis of both rows is turned off.
    """
    vmax = float(reference.max())
    top[0].imshow(reference, cmap="gray", vmin=0, vmax=vmax)
    top[0].set_title(reference_title, fontsize=fontsize if reference_fontsize is None else reference_fontsize)
    for j, (title, img) in enumerate(panels, 1):
        if img is None:
            continue
        top[j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        top[j].set_title(title, fontsize=fontsize)
        bottom[j].imshow(np.abs(img - reference), cmap="inferno", vmin=0, vmax=0.2 * vmax)
        bottom[j].set_title("|error| (0-20% of max)", fontsize=fontsize)
    for ax in (*top, *bottom):
        ax.axis("off")


def save_png(fig, path: str | Path, dpi: float) -> Path:
    """``fig`` as a PNG at ``path``, replaced atomically (`write_published`)."""
    return write_published(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
