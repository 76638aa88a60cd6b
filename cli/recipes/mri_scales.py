"""Multi-scale training data for the MRI prior recipes (``--recipe-option scales=1``).

The shipped priors first saw 128x128 brains only, but ``medrecon recon`` applies them to 320x320
fastMRI-size slices, where the anatomy is 2.5x larger in pixels.  This data set simulates the
brain at recon matrix sizes ``SCALES`` (128 .. 384: the simulator's head fills its field of view
at every size, so the pixel size falls from ~1.8 mm to ~0.6 mm, and its random augmentation
scale 0.9-1.1 and random T1/T2/PD/FLAIR contrast vary within a size), with fastMRI's 2x readout
oversampling, 8-16 coils and SNR 30 as the single-scale recipe.  Each slice is SENSE-combined
with ESPIRiT maps (calibration 24, kernel 6) over the whole encoded field of view (2 s x s) and
normalised by its zero-filled maximum (``mri_normalize.normalize_images``).  To keep the data
preparation within minutes on one core the ESPIRiT maps are computed once per volume, from its middle slice:
the simulator's coil array is fixed per volume, and its slices are contiguous.

Training items are ``size`` x ``size`` windows (fixed size, so one batch mixes scales): row
offsets every ``STRIDE`` pixels over the object's readout extent (the central half of the
oversampled field of view, +- 32 rows), column offsets every ``STRIDE`` over the width, each also
flipped left-right.  At 128 these are exactly the single-scale recipe's windows; at 384 a window
holds a third of the head.  Item j picks scale ``SCALE_CYCLE[j % 6]`` (128 twice: the demos and
the old test sets stay 128-wide), then an (image, window, flip) of that scale: a fixed
enumeration, so a resumed run stays bit-exact.  Volume seeds are ``volume_seed(data_seed, i)``
with i running on across the scales, so no two scales share a head.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from medrecon.datasets.publish import publish_cache

__all__ = ["SCALES", "SCALE_CYCLE", "STRIDE", "simulate_scale", "prepare_multiscale", "MultiScaleWindows"]

SCALES = (128, 192, 256, 320, 384)
SCALE_CYCLE = (128, 192, 256, 128, 320, 384)
STRIDE = 16
FILE = "multiscale.pt"


def simulate_scale(size: int, volumes: int, slices: int, seed: int, first_index: int = 0):
    """SENSE-combined, unnormalised complex images ``[volumes * slices, 2 size, size]`` of volumes
    ``volume_seed(seed, first_index + v)`` simulated at a ``size`` x ``size`` recon matrix."""
    import torch

    from medrecon.datasets.simulate_mri import simulate_mri_volume, volume_seed
    from medrecon.physics.coils import espirit, sense_combine
    from medrecon.physics.fft import ifft2c

    out = []
    for v in range(volumes):
        vol = simulate_mri_volume(slices, (8, 16), (size, size), 30.0, volume_seed(seed, first_index + v))
        k = torch.as_tensor(vol["kspace"])  # [S, C, 2 size, size]
        cw = min(24, *k.shape[-2:])
        maps = espirit(k[slices // 2], calib_width=cw, kernel_width=min(6, cw))
        out.append(sense_combine(ifft2c(k), maps.expand_as(k)))
    return torch.cat(out)


def prepare_multiscale(data_dir: str | os.PathLike, volumes: int, slices: int, seed: int,
                       scales=SCALES, progress: bool = True) -> Path:
    """Simulate, combine and normalise ``volumes`` x ``slices`` images per scale into
    ``data_dir/multiscale.pt`` (``{"sizes": [...], "images": {"128": complex64 [N, 256, 128], ...}}``);
    returns the path, reusing an existing file."""
    import torch

    from .mri_normalize import normalize_images

    data_dir = Path(data_dir)
    target = data_dir / FILE
    if target.is_file():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, size in enumerate(scales):
        t0 = time.monotonic()
        x = simulate_scale(int(size), volumes, slices, seed, first_index=i * volumes)
        images[str(int(size))] = normalize_images(x, seed + i * volumes * slices)
        if progress:
            print(f"multiscale data: {size}x{size}, {len(x)} images, {time.monotonic() - t0:.0f} s", flush=True)
    return publish_cache(target, lambda tmp: torch.save({"sizes": [int(s) for s in scales], "images": images}, tmp))


def load_multiscale(path: str | os.PathLike) -> dict[int, "torch.Tensor"]:  # noqa: F821
    """``{size: images}`` from a file written by ``prepare_multiscale``."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing or unreadable file
        raise ValueError(f"--data {path}: expected a multiscale.pt written by scales=1 ({e})") from None
    if not isinstance(data, dict) or not {"sizes", "images"} <= data.keys():
        raise ValueError(f"--data {path}: expected a multiscale.pt written by scales=1, got {type(data).__name__}")
    return {int(s): data["images"][str(int(s))] for s in data["sizes"]}


def _offsets(length: int, lo: int, hi: int, size: int) -> list[int]:
    """Window offsets every ``STRIDE`` from ``lo`` to ``hi`` (both clipped to [0, length - size])."""
    lo, hi = (min(max(v, 0), length - size) for v in (lo, hi))
    return list(range(lo, hi + 1, STRIDE)) + ([hi] if (hi - lo) % STRIDE else [])


class MultiScaleWindows:
    """``size`` x ``size`` windows of multi-scale images ``{s: [N_s, 2 s, s]}`` (module docstring)."""

    def __init__(self, images: dict, size: int, cycle=SCALE_CYCLE) -> None:
        self.images, self.size = images, size
        self.cycle = [s for s in cycle if s in images] or sorted(images)
        self.windows = {}
        for s, x in images.items():
            He, W = x.shape[-2:]
            if He < size or W < size:
                raise ValueError(f"--data: scale {s} images are {He}x{W}, smaller than the window {size}")
            rows = _offsets(He, He // 4 - 32, He - He // 4 + 32 - size, size)
            cols = _offsets(W, 0, W - size, size)
            self.windows[s] = [(r, c) for r in rows for c in cols]
        self._per = max(len(images[s]) * len(self.windows[s]) * 2 for s in self.cycle)

    def __len__(self) -> int:
        return len(self.cycle) * self._per

    def __getitem__(self, j: int):
        s = self.cycle[j % len(self.cycle)]
        x, win = self.images[s], self.windows[s]
        r = (j // len(self.cycle)) % (len(x) * len(win) * 2)
        n, r = r % len(x), r // len(x)
        o, c = win[r % len(win)]
        w = x[n, o:o + self.size, c:c + self.size]
        return w.flip(-1) if r // len(win) else w
