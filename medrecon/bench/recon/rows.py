"""The rows of ``medrecon bench recon`` (package docstring): the held-out test set, the masks, and
the planned (method, options) entries with the Row each one yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from medrecon.bench.solvers import steps_for
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import KINDS, make_mask
from medrecon.registry import get_method, resolve_options
from medrecon.sample import SOLVERS

__all__ = ["MASKS", "CLASSICAL", "DEFAULT_FAMILIES", "STEPS_FAMILIES", "FOVS", "OUTPUTS", "Entry", "Row",
           "test_set", "parse_mask", "make_test_mask", "split_list", "parse_ints", "plan", "label"]

# name -> (kind, acceleration, center fraction); 10x "uniform" = every 10th line + 24 ACS lines at W = 128
MASKS = {
    "4x-equispaced": ("equispaced_fraction", 4, 0.08),
    "4x-random": ("random", 4, 0.08),
    "8x-equispaced": ("equispaced_fraction", 8, 0.08),
    "8x-random": ("random", 8, 0.08),
    "10x-uniform-acs24": ("equispaced", 10, 24 / 128),
}
CLASSICAL = ("zero-filled", "cg-sense", "l1-wavelet")
DEFAULT_FAMILIES = CLASSICAL + ("score-mri", "hfs-sde", "spirit-diffusion", "dds", "ddnm", "dps", "ccdf", "fdmr")
STEPS_FAMILIES = {"score-mri": "score_steps", "hfs-sde": "hfs_steps", "spirit-diffusion": "spirit_steps",
                  "dps": "dps_steps"}
FOVS = ("full", "crop")
OUTPUTS = ("bench_recon.md", "bench_recon.json", "bench_recon_psnr_nfe.png", "bench_recon_images.png")


@dataclass(frozen=True)
class Entry:
    """One configured row: ``method`` with ``options`` (a JSON-able dict) and its table labels."""

    method: str
    options: dict = field(default_factory=dict, hash=False)
    solver: str = ""
    deepcache: int = 1          # DeepCache interval (1: off)
    masks: Optional[tuple] = None  # None: every mask


@dataclass
class Row:
    mask: str
    method: str
    solver: str
    deepcache: int
    nfe: Optional[int]
    psnr: Optional[float]
    ssim: Optional[float]
    nmse: Optional[float]
    seconds_per_slice: Optional[float]
    slices: int
    options: dict
    kind: str = "classical"
    status: str = "ok"          # ok | n/a | error
    note: str = ""


def test_set(n: int, seed: int = 1000, size: int = 128, coils=8, snr=30.0, fov: str = "full") -> list[dict]:
    """``n`` held-out slices ``{"seed", "kspace" [C, H, size] complex64, "target" [size, size]}``:
    ``fov="full"`` keeps the 2x readout-oversampled grid (H = 2 size, as a fastMRI file and as
    ``medrecon recon`` reconstructs it), ``"crop"`` removes the oversampling (H = size)."""
    from medrecon.datasets.simulate_mri import simulate_mri_volume

    if seed < 1000:
        raise ValueError(f"--seed: held-out test slices use simulator seeds >= 1000 (0..999 are for "
                         f"training), got {seed}")
    if n < 1:
        raise ValueError(f"--slices: expected >= 1, got {n}")
    if fov not in FOVS:
        raise ValueError(f"--fov: expected one of {FOVS}, got {fov!r}")
    out = []
    for i in range(n):
        v = simulate_mri_volume(1, coils, (size, size), snr, seed=seed + i)
        k = torch.from_numpy(v["kspace"][0])                         # [C, 2 size, size]
        H = k.shape[-2]
        x = ifft2c(k)[..., (H - size) // 2:(H - size) // 2 + size, :]  # the recon matrix
        out.append({"seed": seed + i, "kspace": k if fov == "full" else fft2c(x), "target": rss(x)})
    return out


def parse_mask(name: str) -> tuple[str, float, float]:
    """A preset name of ``MASKS`` or ``KIND:R:CENTER_FRACTION`` -> (kind, acceleration, fraction)."""
    if name in MASKS:
        return MASKS[name]
    parts = name.split(":")
    if len(parts) == 3 and parts[0] in KINDS:
        try:
            return parts[0], float(parts[1]), float(parts[2])
        except ValueError:
            pass
    raise ValueError(f"--masks: {name!r} is neither a preset ({', '.join(MASKS)}) nor KIND:R:CENTER_FRACTION "
                     f"with KIND in {', '.join(KINDS)}")


def make_test_mask(name: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """The mask ``name`` (`parse_mask`) for k-space ``shape``, drawn with ``seed``."""
    kind, acc, cf = parse_mask(name)
    acc = int(acc) if float(acc).is_integer() else acc
    return make_mask(kind, shape, acc, cf, seed=seed)


def split_list(text) -> list[str]:
    """A comma-separated option (or a list) -> its non-empty items."""
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_ints(text, what: str) -> list[int]:
    """Comma-separated integers >= 1 (the ``--nfe`` style options)."""
    try:
        vals = [int(t) for t in split_list(text)]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"{what}: expected integers >= 1, got {vals}")
    return vals


def plan(families: list[str], nfe=(10, 20, 50), solvers=SOLVERS, deepcache=(1, 3), steps: dict | None = None,
         options: dict | None = None) -> list[Entry]:
    """The rows to run (module docstring), in order; every option set is validated here."""
    steps = {"score_steps": [1000], "hfs_steps": [1000, 100], "spirit_steps": [1000], "dps_steps": [1000],
             **(steps or {})}
    options = options or {}
    for s in solvers:
        if s not in SOLVERS:
            raise ValueError(f"--solvers: unknown solver {s!r}; expected names from {SOLVERS}")
    entries: list[Entry] = []
    for fam in families:
        spec = get_method(fam)
        base = dict(options.get(fam, {}))
        if fam in ("dds", "ddnm"):
            for solver in ([base["solver"]] if "solver" in base else solvers):  # -o dds.solver=X: only X
                for budget in nfe:
                    n = steps_for(solver, budget)
                    if n is None:
                        continue  # PNDM needs >= 13 calls
                    for dc in deepcache:
                        entries.append(Entry(fam, {**base, "solver": solver, "steps": n}, solver, dc))
        elif fam == "ccdf":
            t0 = float(resolve_options(spec, base).t0)
            for budget in nfe:
                entries.append(Entry(fam, {**base, "steps": max(1, round(budget / t0))}, base.get("solver", "ddim")))
        elif fam in STEPS_FAMILIES:
            for n in steps[STEPS_FAMILIES[fam]]:
                entries.append(Entry(fam, {**base, "steps": n}))
        else:
            entries.append(Entry(fam, base))
    for e in entries:
        resolve_options(get_method(e.method), e.options)
        if e.deepcache < 1:
            raise ValueError(f"--deepcache: intervals must be >= 1 (1 = off), got {e.deepcache}")
    return entries


def label(e: Entry | Row) -> str:
    """Table label: method, solver and DeepCache interval."""
    return e.method + (f" {e.solver}" if e.solver else "") + (f" +DeepCache{e.deepcache}" if e.deepcache > 1 else "")
