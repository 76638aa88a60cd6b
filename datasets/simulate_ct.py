"""Head CT simulator: images in HU, parallel-beam sinograms and low-dose versions, in HDF5.

Images: the tissue maps of `medrecon.datasets.anatomy` (randomly posed, like the MRI simulator)
mixed with per-tissue HU (air -1000, fat -100, CSF 8, WM 28, GM 40, skin 40, each jittered by
+-5 HU per volume; bone drawn per volume from ``BONE_HU`` = 700..1900 HU, the range of skull and
cortical bone in clinical CT: a prior trained on bone at ~1000 HU only pulled the 1200-2000 HU bone
of a real slice down by 260 HU RMSE, docs/priors.md), set to air outside the scanner's circular FOV.

Projections: HU -> linear attenuation ``mu = mu_water (1 + HU / 1000)`` (per mm, clipped at 0);
line integrals ``p = A mu`` with the toolkit's parallel-beam projector
(`medrecon.physics.ParallelBeam`, scikit-image's geometry: equal to ``radon(mu, circle=True) *
pixel_size_mm`` to float64 rounding, batched over slices), angles in [0, 180).

Low dose: detected counts ``N = Poisson(I0 exp(-p)) + Normal(0, sigma_e^2)`` (electronic noise),
clipped to ``N >= eps`` (default 1 photon, so the log is finite; this caps ``p`` at
``log(I0 / eps)``), and ``p_low = log(I0 / N)``.  For large counts ``Var(p_low) ~
(I0 e^-p + sigma_e^2) / (I0 e^-p)^2`` (delta method).

HDF5 layout (one file per volume, written atomically, ``format = "medrecon-ct-sim"``):

- ``image_hu``          float32 ``[S, N, N]``
- ``sinogram``          float32 ``[S, n_angles, N]`` noise-free line integrals (dimensionless)
- ``sinogram_lowdose``  float32 ``[S, n_angles, N]``
- attrs ``angles_deg`` (array), ``I0``, ``sigma_e``, ``eps``, ``pixel_size_mm``,
  ``slice_thickness_mm``, ``mu_water`` (1/mm), ``geometry`` ("parallel"), ``projector``,
  ``source``, ``sim_seed``, ``patient_id``.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import torch

from medrecon.datasets.anatomy import TISSUES, random_tissue_slices
from medrecon.datasets.fastmri import atomic_h5
from medrecon.datasets.outputs import plan_outputs
from medrecon.physics.ct import MU_WATER, ParallelBeam, hu_to_mu

__all__ = ["HU", "MU_WATER", "tissues_to_hu", "hu_to_mu", "circle_mask", "line_integrals",
           "lowdose_sinogram", "simulate_ct_volume", "simulate_ct_dataset", "write_ct",
           "read_ct", "ct_file_name"]

HU = {"air": -1000.0, "csf": 8.0, "gm": 40.0, "wm": 28.0, "bone": 1000.0, "fat": -100.0,
      "skin": 40.0}
BONE_HU = (700.0, 1900.0)  # per-volume bone value, uniform (module docstring)
FORMAT = "medrecon-ct-sim"


def ct_file_name(seed: int, index: int) -> str:
    return f"sim_ct_s{int(seed)}_{int(index):05d}.h5"


def tissues_to_hu(maps: np.ndarray, table: dict | None = None) -> np.ndarray:
    """HU image ``[..., H, W]`` from tissue fractions ``[..., K, H, W]``; the rest is air."""
    table = table or HU
    frac = np.moveaxis(maps, -3, -1)
    hu = np.tensordot(frac, np.asarray([table[t] for t in TISSUES]), axes=1)
    return (hu + (1.0 - frac.sum(-1)) * table["air"]).astype(np.float32)


def circle_mask(n: int) -> np.ndarray:
    """The pixels scikit-image's ``radon(circle=True)`` sees (the inscribed circle)."""
    y, x = np.ogrid[:n, :n]
    return (y - n // 2) ** 2 + (x - n // 2) ** 2 <= (n // 2) ** 2


def line_integrals(mu: np.ndarray, angles_deg, pixel_size_mm: float) -> np.ndarray:
    """Parallel-beam line integrals ``[S, n_angles, N]`` of ``mu [S, N, N]`` (1/mm)."""
    mu = np.asarray(mu, np.float64)
    if mu.ndim != 3 or mu.shape[1] != mu.shape[2]:
        raise ValueError(f"mu must be [slices, N, N] (square), got shape {mu.shape}")
    geom = ParallelBeam(mu.shape[-1], np.deg2rad(np.asarray(angles_deg, np.float64)),
                        detector_spacing=pixel_size_mm, pixel_size=pixel_size_mm)
    return geom.forward(torch.from_numpy(mu)).numpy()


def lowdose_sinogram(p: np.ndarray, i0: float, sigma_e: float, rng: np.random.Generator,
                     eps: float = 1.0) -> np.ndarray:
    """Noisy line integrals ``log(I0 / max(Poisson(I0 e^-p) + N(0, sigma_e^2), eps))``."""
    if not i0 > 0 or sigma_e < 0 or not eps > 0:
        raise ValueError(f"need I0 > 0, sigma_e >= 0 and eps > 0, got {i0}, {sigma_e}, {eps}")
    counts = rng.poisson(i0 * np.exp(-np.asarray(p, np.float64))).astype(np.float64)
    if sigma_e > 0:
        counts += rng.normal(0.0, sigma_e, counts.shape)
    return np.log(i0 / np.maximum(counts, eps))


def simulate_ct_volume(n_slices: int = 4, size: int = 256, n_angles: int = 360,
                       i0: float = 1e5, sigma_e: float = 5.0, seed: int = 0,
                       source: str = "auto", augment: bool = True, mu_water: float = MU_WATER,
                       eps: float = 1.0, zoom: float = 1.0) -> dict:
    """One volume: ``image_hu [S, N, N]``, ``mu``, ``sinogram`` and ``sinogram_lowdose``
    ``[S, n_angles, N]``, ``angles_deg`` and ``attrs`` (see the module docstring).  ``zoom`` > 1:
    the head overfills the circular FOV and is cut at its edge, as in a zoomed clinical series
    (`medrecon.datasets.anatomy.random_tissue_slices`)."""
    n = int(size)
    if n_slices < 1 or n < 16 or n_angles < 1:
        raise ValueError(f"need n_slices >= 1, size >= 16 and n_angles >= 1, got {n_slices}, "
                         f"{size}, {n_angles}")
    rng = np.random.default_rng(seed)
    maps, geo = random_tissue_slices(rng, n_slices, (n, n), source, augment, zoom)
    table = {t: (rng.uniform(*BONE_HU) if t == "bone" else v + rng.uniform(-5, 5))
             for t, v in HU.items() if t != "air"}
    hu = tissues_to_hu(maps, {**table, "air": HU["air"]})
    hu[:, ~circle_mask(n)] = HU["air"]
    angles = np.linspace(0.0, 180.0, int(n_angles), endpoint=False)
    mu = hu_to_mu(hu, mu_water)
    sino = line_integrals(mu, angles, geo["pixel_mm"])
    low = lowdose_sinogram(sino, i0, sigma_e, rng, eps)
    attrs = {"angles_deg": angles, "I0": float(i0), "sigma_e": float(sigma_e), "eps": float(eps),
             "pixel_size_mm": float(geo["pixel_mm"]), "mu_water": float(mu_water),
             "slice_thickness_mm": float(geo["thickness_mm"]), "geometry": "parallel",
             "projector": "medrecon.physics.ParallelBeam(circle=True)", "source": geo["source"],
             "sim_seed": int(seed), "zoom": float(zoom)}
    return {"image_hu": hu, "mu": mu.astype(np.float32), "sinogram": sino.astype(np.float32),
            "sinogram_lowdose": low.astype(np.float32), "angles_deg": angles, "attrs": attrs}


def write_ct(path, volume: dict, overwrite: bool = False, attrs: dict | None = None) -> Path:
    """Write a volume from `simulate_ct_volume` in the layout above (atomically)."""
    with atomic_h5(path, overwrite) as f:
        for key in ("image_hu", "sinogram", "sinogram_lowdose"):
            a = np.asarray(volume[key], np.float32)
            f.create_dataset(key, data=a, chunks=(1,) + a.shape[1:])
        f.attrs["format"] = FORMAT
        for key, val in {**volume["attrs"], **(attrs or {})}.items():
            f.attrs[key] = val
    return Path(path)


def read_ct(path, slices: slice | None = None) -> dict:
    """Read a simulated CT file: the three arrays (optionally ``slices`` of them) and attrs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file: {exc}") from None
    with f:
        missing = [k for k in ("image_hu", "sinogram", "sinogram_lowdose") if k not in f]
        if missing or "angles_deg" not in f.attrs:
            raise ValueError(f"{path}: not a {FORMAT} file (missing "
                             f"{', '.join(missing) or 'attr angles_deg'})")
        sel = slices if slices is not None else slice(None)
        out = {k: np.asarray(f[k][sel]) for k in ("image_hu", "sinogram", "sinogram_lowdose")}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    S, n = out["image_hu"].shape[0], out["image_hu"].shape[-1]
    expect = (S, len(attrs["angles_deg"]), n)
    for k in ("sinogram", "sinogram_lowdose"):
        if out[k].shape != expect:
            raise ValueError(f"{path}: {k} has shape {out[k].shape}, expected {expect} "
                             "[slices, n_angles, N]")
    out["attrs"] = attrs
    return out


def simulate_ct_dataset(out_dir, n_volumes: int, slices_per_volume: int = 8, size: int = 256,
                        n_angles: int = 360, i0: float = 1e5, sigma_e: float = 5.0,
                        seed: int = 0, progress: bool = True, overwrite: bool = False,
                        source: str = "auto") -> list[Path]:
    """Write ``n_volumes`` files ``sim_ct_s{seed}_{i:05d}.h5`` (volume ``i`` seeded by
    ``volume_seed(seed, i)``); existing files are refused up front unless ``overwrite``."""
    from tqdm.auto import tqdm

    from medrecon.datasets.simulate_mri import volume_seed

    if n_volumes < 1 or slices_per_volume < 1:
        raise ValueError(f"need n_volumes >= 1 and slices_per_volume >= 1, got {n_volumes} "
                         f"and {slices_per_volume}")
    paths = plan_outputs(out_dir, [ct_file_name(seed, i) for i in range(n_volumes)], overwrite)
    for i, path in enumerate(tqdm(paths, disable=not progress, desc="simulate ct", unit="vol")):
        v = simulate_ct_volume(slices_per_volume, size, n_angles, i0, sigma_e,
                               volume_seed(seed, i), source)
        write_ct(path, v, overwrite, {"patient_id": f"medrecon-sim-ct-{seed}-{i:05d}",
                                      "sim_index": i})
    return paths
