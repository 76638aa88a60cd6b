"""NDCT / LDCT image pairs from the head-CT simulator, normalised for the networks.

Pipeline (per volume, ``medrecon.datasets.simulate_ct.simulate_ct_volume``): HU phantom ->
attenuation -> parallel-beam line integrals ``sinogram`` (noise-free) and ``sinogram_lowdose``
(Poisson counts at incident flux ``i0`` + electronic noise ``sigma_e``, log transform) over
``n_angles`` angles in [0, 180).  Then, with the same ``medrecon.physics.ParallelBeam`` geometry
(the simulator's pixel size) and ``medrecon.physics.fbp`` (``filter``, default ramp):

- LDCT = FBP(sinogram_lowdose), converted back to HU (``mu_to_hu``).
- NDCT (the training target) = FBP(noise-free sinogram) in HU by default (``target="fbp"``):
  LDCT and NDCT then differ only by the dose-dependent noise, as a real NDCT/LDCT pair (both
  are FBP reconstructions with the same resolution and discretisation artifacts).
  ``target="image"`` uses the phantom ``image_hu`` itself instead (the task then also includes
  undoing FBP's blur/aliasing).

Normalisation (documented, fixed): ``x = HU / 1000``, so air = -1, water = 0, dense bone ~ +1
(``HU_SCALE = 1000``); ``to_hu`` / ``from_hu`` convert.  No clipping or windowing.

Items are ``(ndct, ldct)``, each ``float32 [1, N, N]`` (``return_hu=True`` adds the HU phantom).
``body_mask`` selects "inside the body" (NDCT > -500 HU) for HU RMSE.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["HU_SCALE", "to_hu", "from_hu", "body_mask", "check_pair", "pair_tensors", "simulate_pairs", "CTPairDataset"]

HU_SCALE = 1000.0
BODY_THRESHOLD_HU = -500.0
ZOOM_RANGE = (1.1, 1.8)  # magnification of the truncated-FOV volumes (simulate_pairs)


def to_hu(x: torch.Tensor) -> torch.Tensor:
    """Normalised image -> HU (``x * 1000``)."""
    return x * HU_SCALE


def from_hu(hu: torch.Tensor) -> torch.Tensor:
    """HU -> normalised image (``HU / 1000``)."""
    return hu / HU_SCALE


def body_mask(ndct_hu: torch.Tensor, threshold_hu: float = BODY_THRESHOLD_HU) -> torch.Tensor:
    """Boolean mask of the pixels inside the body (NDCT above ``threshold_hu``, default -500 HU)."""
    return ndct_hu > threshold_hu


def simulate_pairs(n_slices: int = 8, size: int = 32, *, n_angles: int | None = None,
                   i0: float = 1e4, sigma_e: float = 5.0, seed: int = 0,
                   slices_per_volume: int = 4, target: str = "fbp", filter: str = "ramp",
                   source: str = "auto", zoom_fraction: float = 0.0,
                   zoom_range: tuple[float, float] = ZOOM_RANGE) -> dict[str, torch.Tensor]:
    """Simulate ``n_slices`` pairs; returns ``ndct``, ``ldct`` (normalised, ``[S, 1, N, N]``
    float32) and ``image_hu`` (the phantom, ``[S, N, N]``).  ``n_angles`` defaults to ``3N/2``.
    Volume ``v`` (``slices_per_volume`` slices each) is simulated with seed ``seed * 1000 + v``;
    a ``zoom_fraction`` of the volumes (drawn from ``default_rng([seed, v, 7])``) is magnified by a
    factor in ``zoom_range``, so the head is cut by the FOV circle (zoomed clinical series: their
    simulated projections see the cut edge, which a prior trained on whole heads never saw)."""
    from medrecon.datasets.simulate_ct import simulate_ct_volume
    from medrecon.physics.ct import ParallelBeam, fbp, mu_to_hu

    if target not in ("fbp", "image"):
        raise ValueError(f"target: expected 'fbp' or 'image', got {target!r}")
    for name, val in (("n_slices", n_slices), ("slices_per_volume", slices_per_volume)):
        if int(val) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    size = int(size)
    if size < 16 or size % 4:
        raise ValueError(f"size: expected a multiple of 4 that is >= 16, got {size}")
    n_angles = int(n_angles) if n_angles is not None else (3 * size) // 2
    nd, ld, ph = [], [], []
    done, vol = 0, 0
    while done < n_slices:
        k = min(int(slices_per_volume), n_slices - done)
        zr = np.random.default_rng([int(seed), vol, 7])
        zoom = float(zr.uniform(*zoom_range)) if zr.random() < zoom_fraction else 1.0
        v = simulate_ct_volume(k, size, n_angles, i0=i0, sigma_e=sigma_e,
                               seed=int(seed) * 1000 + vol, source=source, zoom=zoom)
        px = float(v["attrs"]["pixel_size_mm"])
        mw = float(v["attrs"]["mu_water"])
        geo = ParallelBeam(size, torch.from_numpy(np.deg2rad(v["angles_deg"])),
                           detector_spacing=px, pixel_size=px)
        low = mu_to_hu(fbp(torch.from_numpy(v["sinogram_lowdose"]).double(), geo, filter), mw)
        if target == "fbp":
            high = mu_to_hu(fbp(torch.from_numpy(v["sinogram"]).double(), geo, filter), mw)
        else:
            high = torch.from_numpy(v["image_hu"]).double()
        nd.append(from_hu(torch.as_tensor(high)).float())
        ld.append(from_hu(torch.as_tensor(low)).float())
        ph.append(torch.from_numpy(v["image_hu"]).float())
        done += k
        vol += 1
    return {"ndct": torch.cat(nd)[:, None], "ldct": torch.cat(ld)[:, None], "image_hu": torch.cat(ph)}


class CTPairDataset(torch.utils.data.Dataset):
    """Simulated (NDCT, LDCT) pairs held in memory; see the module docstring for the recipe.

    ``CTPairDataset(n_slices, size, **simulate_pairs options)`` simulates; or pass tensors
    ``ndct``/``ldct`` (normalised, ``[S, 1, N, N]``) to wrap existing data.
    """

    def __init__(self, n_slices: int = 8, size: int = 32, *, ndct: torch.Tensor | None = None,
                 ldct: torch.Tensor | None = None, **options) -> None:
        if (ndct is None) != (ldct is None):
            raise ValueError("ndct, ldct: pass both or neither")
        if ndct is None:
            d = simulate_pairs(n_slices, size, **options)
            ndct, ldct, self.image_hu = d["ndct"], d["ldct"], d["image_hu"]
        else:
            self.image_hu = None
        ndct, ldct = torch.as_tensor(ndct), torch.as_tensor(ldct)
        ndct = ndct[:, None] if ndct.ndim == 3 else ndct
        ldct = ldct[:, None] if ldct.ndim == 3 else ldct
        check_pair(ndct, ldct)
        self.ndct, self.ldct = ndct.float(), ldct.float()

    def __len__(self) -> int:
        return self.ndct.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ndct[i], self.ldct[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs at once: ``(ndct, ldct)``, each ``[S, 1, N, N]``."""
        return self.ndct, self.ldct


def check_pair(ndct: torch.Tensor, ldct: torch.Tensor) -> None:
    """Raise ``ValueError`` unless NDCT and LDCT are real, finite ``[S, 1, H, W]`` of equal shape."""
    for name, x in (("ndct", ndct), ("ldct", ldct)):
        if not isinstance(x, torch.Tensor) or x.is_complex() or x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{name}: expected a real tensor [S, 1, H, W], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    if ndct.shape != ldct.shape:
        raise ValueError(f"ndct, ldct: shapes differ ({tuple(ndct.shape)} vs {tuple(ldct.shape)}); "
                         "each NDCT slice needs the LDCT slice of the same size")
    if ndct.shape[0] < 1:
        raise ValueError("ndct, ldct: no slices")


def pair_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ndct, ldct)`` float tensors ``[S, 1, H, W]`` from a ``CTPairDataset``, a tensor pair or any
    dataset of (ndct, ldct) items; checked with ``check_pair``."""
    if hasattr(data, "tensors"):
        nd, ld = data.tensors()
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        nd, ld = data
    else:
        items = [data[i] for i in range(len(data))]
        nd = torch.stack([torch.as_tensor(a) for a, _ in items])
        ld = torch.stack([torch.as_tensor(b) for _, b in items])
    check_pair(nd, ld)
    return nd.float(), ld.float()
