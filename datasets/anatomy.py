"""Anatomical source for the simulators: tissue maps of a head, shipped in a registry package.

The source is the MNI152 2009a template that nilearn ships inside its wheel (T1, grey- and
white-matter probability maps, 1 mm and 2 mm).  The files are read with nibabel straight from
nilearn's package folder, so nothing is downloaded at run time and ``nilearn`` itself is never
imported (it is slow to import).  The template is skull-stripped, so a head is completed around
the brain with shells at a distance ``d`` from it: CSF/meninges (0-2 mm), skull (2-8 mm),
subcutaneous fat (8-11 mm) and skin (11-13 mm).  CSF inside the brain is the brain region minus
GM and WM.

Without nilearn (install the optional extra ``medrecon[sim]``) the source falls back to SigPy's
3-D Shepp-Logan phantom, its intensity bands read as tissues (1 -> bone, 0.2 -> WM, 0.3 -> GM,
0 inside the head -> CSF) with a warning.

MR contrasts come from a spin-echo / inversion-recovery signal equation over per-tissue
(PD, T1, T2) values at 3 T, so T1-, T2-, PD-weighted and FLAIR-like images of one anatomy differ
the way real ones do.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = ["TISSUES", "TISSUE_MR", "Anatomy", "tissue_volume", "axial_slices",
           "random_tissue_slices", "contrast_params", "mix_contrast"]

TISSUES = ("csf", "gm", "wm", "bone", "fat", "skin")
# (PD, T1 ms, T2 ms) at 3 T, rounded literature values (Wansapura 1999, Stanisz 2005).
TISSUE_MR = {"csf": (1.0, 4000.0, 2000.0), "gm": (0.80, 1330.0, 110.0),
             "wm": (0.69, 830.0, 80.0), "bone": (0.05, 1000.0, 1.0),
             "fat": (0.90, 380.0, 130.0), "skin": (0.75, 1100.0, 45.0)}
_SHELLS_MM = (("csf", 0.0, 2.0), ("bone", 2.0, 8.0), ("fat", 8.0, 11.0), ("skin", 11.0, 13.0))
SIM_EXTRA_HINT = "pip install 'medrecon[sim]' (nilearn) for the MNI152 anatomy"


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions ``maps [K, Z, Y, X]`` (axial slices ``[Y, X]``, anterior at row 0)."""

    maps: np.ndarray
    voxel_mm: float
    source: str
    z_range: tuple[int, int]  # axial slices through the cerebrum

    @property
    def tissues(self) -> tuple[str, ...]:
        return TISSUES


def _mni_folder() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    found = (folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").is_file()
    return folder if found else None


def _load_mni(folder: Path, resolution: int) -> tuple[np.ndarray, float]:
    import nibabel as nib
    from scipy import ndimage

    def load(name):
        img = nib.load(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        a = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        a = a.transpose(2, 1, 0)[:, ::-1, :]  # (x, y, z) RAS -> [Z, Y (anterior first), X]
        if resolution == 2:  # 2x2x2 block mean (faster than ndimage.zoom, no aliasing)
            z, y, x = (n // 2 * 2 for n in a.shape)
            a = a[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))
        return np.ascontiguousarray(a)

    t1, gm, wm = load("t1"), load("gm"), load("wm")
    brain = ndimage.binary_fill_holes(t1 > 0.02)
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(brain - gm - wm, 0, 1)
    d = ndimage.distance_transform_edt(~brain, sampling=float(resolution))
    maps = {"csf": csf, "gm": gm * brain, "wm": wm * brain}
    for name, lo, hi in _SHELLS_MM:
        shell = ((d > lo) & (d <= hi)).astype(np.float32)
        maps[name] = maps.get(name, 0) + ndimage.gaussian_filter(shell, 0.5)
    return np.stack([np.clip(maps[t], 0, 1) for t in TISSUES]).astype(np.float32), float(resolution)


@functools.lru_cache(maxsize=2)
def _load_shepp_logan(resolution: int) -> tuple[np.ndarray, float]:
    import sigpy as sp
    from scipy import ndimage

    n = 160 // resolution
    v = np.real(sp.shepp_logan((n, n, n))).astype(np.float32)
    head = ndimage.binary_fill_holes(v > 0.5, structure=np.ones((1, 3, 3)))
    maps = {"bone": v > 0.9, "wm": np.isclose(v, 0.2, atol=0.05),
            "gm": (v > 0.25) & (v < 0.9), "csf": head & (v < 0.05)}
    out = np.stack([maps.get(t, np.zeros_like(head)) for t in TISSUES]).astype(np.float32)
    out.setflags(write=False)
    return out, 240.0 / n


@functools.lru_cache(maxsize=4)
def tissue_volume(source: str = "auto", resolution: int = 2) -> Anatomy:
    """The 3-D tissue maps (cached).  ``source``: 'auto' (MNI152 if nilearn is installed, else
    Shepp-Logan with a warning), 'mni152' or 'shepp-logan'; ``resolution`` 1 or 2 mm."""
    if source not in ("auto", "mni152", "shepp-logan"):
        raise ValueError(f"source must be 'auto', 'mni152' or 'shepp-logan', got {source!r}")
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution}")
    folder = _mni_folder() if source != "shepp-logan" else None
    if source == "mni152" and folder is None:
        raise ValueError(f"source 'mni152' needs nilearn's bundled templates: {SIM_EXTRA_HINT}")
    if folder is None:
        if source == "auto":
            warnings.warn(f"nilearn not found: simulating on SigPy's 3-D Shepp-Logan phantom; "
                          f"{SIM_EXTRA_HINT}", RuntimeWarning, stacklevel=2)
        maps, vox = _load_shepp_logan(resolution)
        name = "shepp-logan"
    else:
        maps, vox = _load_mni(folder, resolution)
        maps.setflags(write=False)
        name = "mni152"
    # cerebrum: slices whose brain area is at least 60% of the largest
    area = (maps[1] + maps[2]).sum(axis=(1, 2)) if name == "mni152" else maps.sum(axis=(0, 2, 3))
    zs = np.flatnonzero(area >= 0.6 * area.max())
    return Anatomy(maps, vox, name, (int(zs[0]), int(zs[-1]) + 1))


def axial_slices(anatomy: Anatomy, z, size: tuple[int, int], augmentations=None) -> np.ndarray:
    """Tissue maps ``[S, K, H, W]`` of the axial slices at (fractional) indices ``z``, resampled
    onto an ``H x W`` grid whose smaller side spans the template's in-plane extent; optional
    per-slice `medrecon.datasets.augment.Augmentation` (one or a list)."""
    from scipy import ndimage

    from medrecon.datasets.augment import Augmentation, warp

    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    lo, hi = 0, anatomy.maps.shape[1] - 1
    if z.min() < lo or z.max() > hi:
        raise ValueError(f"slice index out of range [{lo}, {hi}]: {z.min()}..{z.max()}")
    augs = augmentations if isinstance(augmentations, (list, tuple)) else [augmentations] * len(z)
    src_side = max(anatomy.maps.shape[2:])
    factor = src_side / min(size)
    out = []
    for zi, aug in zip(z, augs):
        i0 = int(np.floor(zi))
        i1, t = min(i0 + 1, hi), zi - i0
        sl = (1 - t) * anatomy.maps[:, i0] + t * anatomy.maps[:, i1]
        if factor > 1:  # anti-alias before downsampling (skimage.transform.resize's sigma)
            sl = ndimage.gaussian_filter(sl, (0, (factor - 1) / 2, (factor - 1) / 2))
        out.append(warp(sl, size, src_side, aug or Augmentation()))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def random_tissue_slices(rng: np.random.Generator, n_slices: int, size: tuple[int, int],
                         source: str = "auto", augment: bool = True,
                         zoom: float = 1.0) -> tuple[np.ndarray, dict]:
    """``n_slices`` contiguous axial slices of one randomly posed head: tissue maps
    ``[S, K, H, W]`` and geometry (``pixel_mm``, ``thickness_mm``, ``z``).  ``zoom`` > 1 magnifies
    the head about the centre (a display field of view smaller than the head: the CT simulator's
    truncated-FOV volumes); it draws nothing from ``rng``."""
    from medrecon.datasets.augment import Augmentation, random_augmentation

    anat = tissue_volume(source, 1 if max(size) > 160 else 2)
    z0, z1 = anat.z_range[0], anat.z_range[1] - 1
    step = rng.uniform(2.0, 6.0) / anat.voxel_mm  # slice spacing 2-6 mm
    span = step * (n_slices - 1)
    if span > z1 - z0:
        step = (z1 - z0) / max(n_slices - 1, 1)
        span = step * (n_slices - 1)
    start = rng.uniform(z0, z1 - span)
    z = start + step * np.arange(n_slices)
    aug = random_augmentation(rng) if augment else Augmentation()
    if zoom != 1.0:
        aug = replace(aug, scale=aug.scale * float(zoom))
    maps = axial_slices(anat, z, size, aug)
    fov_mm = max(anat.maps.shape[2:]) * anat.voxel_mm / aug.scale
    return maps, {"pixel_mm": fov_mm / min(size), "thickness_mm": step * anat.voxel_mm,
                  "z": z, "source": anat.source, "augmentation": aug}


def contrast_params(kind: str = "random", rng: np.random.Generator | None = None) -> dict:
    """Sequence timing ``TR``, ``TE``, ``TI`` (ms, TI = 0 for spin echo) and per-tissue
    (PD, T1, T2) jittered by +-10%.  ``kind``: 't1', 't2', 'pd', 'flair' or 'random'."""
    rng = rng if rng is not None else np.random.default_rng(0)
    kinds = ("t1", "t2", "pd", "flair")
    if kind == "random":
        kind = kinds[rng.integers(len(kinds))]
    if kind not in kinds:
        raise ValueError(f"contrast kind must be one of {kinds} or 'random', got {kind!r}")
    u = rng.uniform
    tr, te, ti = {"t1": (u(400, 700), u(8, 15), 0.0), "t2": (u(3500, 6000), u(80, 120), 0.0),
                  "pd": (u(2500, 4500), u(10, 25), 0.0),
                  "flair": (u(8000, 10000), u(90, 130), 0.0)}[kind]
    tissue = {t: tuple(float(v * u(0.9, 1.1)) for v in p) for t, p in TISSUE_MR.items()}
    if kind == "flair":  # null CSF: TI = T1 ln(2 / (1 + exp(-TR/T1)))
        t1 = tissue["csf"][1]
        ti = t1 * np.log(2.0 / (1.0 + np.exp(-tr / t1)))
    return {"kind": kind, "TR": float(tr), "TE": float(te), "TI": float(ti), "tissue": tissue}


def mix_contrast(maps: np.ndarray, params: dict) -> np.ndarray:
    """Magnitude image ``[..., H, W]`` = sum_k maps_k * S_k with the signal of each tissue
    S = PD (1 - 2 exp(-TI/T1) + exp(-TR/T1)) exp(-TE/T2) (TI = 0: spin echo), taken in
    magnitude; ``maps [..., K, H, W]`` in `TISSUES` order (a 3-D `Anatomy` gives
    ``np.moveaxis(anatomy.maps, 0, 1)``).  Scaled to a maximum of 1."""
    tr, te, ti = params["TR"], params["TE"], params["TI"]
    sig = []
    for t in TISSUES:
        pd, t1, t2 = params["tissue"][t]
        mz = 1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1) if ti > 0 else 1 - np.exp(-tr / t1)
        sig.append(pd * abs(mz) * np.exp(-te / t2))
    img = np.tensordot(np.moveaxis(maps, -3, -1), np.asarray(sig, np.float32), axes=1)
    peak = float(img.max())
    return (img / peak if peak > 0 else img).astype(np.float32)
