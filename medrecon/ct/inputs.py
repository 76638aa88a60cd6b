"""CT inputs of ``medrecon recon``: a DICOM CT series or a sinogram file, as a low-dose scan.

**DICOM CT series** (a folder of slices or one file, ``Modality`` CT; values in HU after the
modality LUT).  Square slices only.  Option ``dose``:

- ``"normal"`` (default): the series is taken as a normal-dose image and a low-dose scan of it is
  simulated, as the training pairs are (`medrecon.ct.data`): HU, clipped below at -1000 (air:
  the -2000 / -3024 padding outside a scanner's FOV attenuates nothing), -> ``mu = hu_to_mu(HU)``
  -> parallel-beam line integrals of the *whole square slice* -- ``ParallelBeam(N, angles,
  n_detectors=ceil(sqrt(2) N), circle=False)``, ``n_angles`` (default ``3N/2``) views evenly over
  [0, pi), detectors at the pixel spacing, pixel size = PixelSpacing -- then ``physics.ct_noise.simulate_lowdose`` with incident flux ``i0``
  (default 1e4 photons per element), electronic noise ``sigma_e`` (default 5 photons) and
  ``noise_seed`` (default 0; slice k uses ``noise_seed + k``).  The reference for the metrics
  is the FBP of the noise-free projections (what the networks are trained towards).  A
  zoomed series (the anatomy fills the square, as pydicom's ``CT_small.dcm``) is thereby measured
  completely, as the scanner measured the body; before 2026-12-06 the projector assumed the
  object inside the inscribed circle (N detectors), so the corners were cut from the rays and
  every FBP, the reference included, had a one-pixel ring of up to +2000 HU at the FOV edge
  that no denoiser trained on complete projections can reproduce.
- ``"low"``: the series already is a low-dose (FBP) image: it is used as the LDCT image as is
  (no sinogram, no reference; ``fbp`` has nothing to do and is refused).

**Sinogram file** (line integrals ``-log(I / I0)``, dimensionless, or detector counts).
``.h5``/``.hdf5``: dataset ``sinogram`` (line integrals) or ``counts`` (photons, attr ``i0``
required; the log transform refuses counts <= 0), ``[n_angles, n_detectors]`` or
``[slices, n_angles, n_detectors]``, with the geometry in attrs (``.npz``: the same names as
arrays):

- ``geometry``: ``"parallel"`` (default) or ``"fan"``;
- ``angles`` (radians) or ``angles_deg``: one per view; default evenly over [0, pi) (parallel)
  or [0, 2 pi) (fan);
- ``pixel_size`` (mm, default 1), ``image_size`` (default ``n_detectors``), ``detector_spacing``
  (mm, default ``pixel_size``), ``n_detectors`` (optional, checked against the data);
- fan only: ``source_distance``, ``detector_distance`` (mm, required), ``detector``
  (``"equiangular"`` default or ``"flat"``); a scan shorter than 2 pi is reconstructed with
  Parker weights (it must cover ``pi + 2 gamma_max``, `medrecon.physics.ct_parker`);
- optional ``mu_water`` (1/mm), ``slice_thickness`` (mm), and a dataset ``reference_hu``
  ``[slices, N, N]`` scored against.

The CT simulator's files (``format = "medrecon-ct-sim"``, `medrecon.datasets.simulate_ct`) are
read too: ``sinogram_lowdose`` is the scan, the FBP of the noise-free ``sinogram`` the
reference.  ``.npy``: line integrals only, with the parallel defaults above.  Shapes, angles and
geometry are checked before any work, with errors that say what does not match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CTScan", "SINOGRAM_SUFFIXES", "is_ct_input", "read_ct_input", "write_sinogram",
           "geometry_from_attrs", "count_slices", "whole_slice_geometry", "project_hu"]

SINOGRAM_SUFFIXES = (".h5", ".hdf5", ".npz", ".npy")
_DATA_KEYS = ("sinogram", "counts", "sinogram_lowdose")


@dataclass
class CTScan:
    """One CT input, slices selected: the low-dose scan and what is needed to write results."""

    path: Path
    kind: str                                  # "dicom" or "sinogram"
    geometry: Any = None                       # ParallelBeam / FanBeam (None: image input)
    sinogram: torch.Tensor | None = None       # float64 [S, n_angles, n_det] line integrals
    ldct_hu: np.ndarray | None = None          # [S, N, N] when the input is the LDCT image
    reference_hu: np.ndarray | None = None     # [S, N, N] or None
    short_scan: bool = False
    mu_water: float = 0.0192
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))  # LPS for (k, r, c)
    series: Any = None                         # DicomSeries of these slices (DICOM input)
    simulation: dict | None = None
    info: dict = field(default_factory=dict)   # JSON-able geometry description
    n_slices_total: int = 0

    @property
    def image_size(self) -> int:
        if self.geometry is not None:
            return self.geometry.image_size
        return int(self.ldct_hu.shape[-1])


def _h5_kind(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return any(k in f for k in _DATA_KEYS) and "kspace" not in f
    except OSError:
        return False


def is_ct_input(path) -> bool:
    """True for a sinogram file of the documented format or a DICOM CT series (folder or file);
    False for anything else, a missing path or one that cannot be read (it then fails as an MRI
    input, with that reader's error)."""
    p = Path(path)
    name = p.name.lower()
    try:
        if p.is_file() and name.endswith((".npy", ".npz")):
            return True
        if p.is_file() and name.endswith((".h5", ".hdf5")):
            return _h5_kind(p)
        if name.endswith((".nii", ".nii.gz")) or not p.exists():
            return False
        return _dicom_modality(p) == "CT"
    except (OSError, ValueError):
        return False


def _dicom_modality(p: Path) -> str | None:
    import pydicom

    files = [p] if p.is_file() else sorted(q for q in p.iterdir()
                                           if q.is_file() and not q.name.startswith("."))
    for q in files[:20]:
        try:
            ds = pydicom.dcmread(q, stop_before_pixels=True)
        except Exception:  # pydicom raises several types for non-DICOM files
            continue
        if "Modality" in ds:
            return str(ds.Modality).upper()
    return None


# ------------------------------------------------------------------------------- geometry
def _scalar(attrs: dict, key: str, default=None, kind=float):
    if key not in attrs:
        return default
    v = attrs[key]
    v = v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v
    if isinstance(v, bytes):
        v = v.decode()
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ValueError(f"attribute {key!r}: expected {kind.__name__}, got {v!r}") from None


def geometry_from_attrs(attrs: dict, n_angles: int, n_det: int, where: str):
    """``(geometry, info)`` from the documented attributes; checks them against the data shape."""
    from medrecon.physics.ct import FanBeam, ParallelBeam

    kind = _scalar(attrs, "geometry", "parallel", str).lower()
    if kind not in ("parallel", "fan"):
        raise ValueError(f"{where}: attribute geometry must be 'parallel' or 'fan', got {kind!r}")
    if "angles" in attrs:
        angles = np.asarray(attrs["angles"], np.float64).ravel()
    elif "angles_deg" in attrs:
        angles = np.deg2rad(np.asarray(attrs["angles_deg"], np.float64).ravel())
    else:
        period = math.pi if kind == "parallel" else 2 * math.pi
        angles = np.arange(n_angles) * (period / n_angles)
    if angles.size != n_angles:
        raise ValueError(f"{where}: the sinogram has {n_angles} views (axis -2) but the geometry "
                         f"lists {angles.size} angles")
    if not np.isfinite(angles).all():
        raise ValueError(f"{where}: angles contain NaN or Inf")
    nd_attr = _scalar(attrs, "n_detectors", None, int)
    if nd_attr is not None and nd_attr != n_det:
        raise ValueError(f"{where}: the sinogram has {n_det} detector elements (last axis) but the "
                         f"geometry says n_detectors = {nd_attr}")
    px = _scalar(attrs, "pixel_size", None) or _scalar(attrs, "pixel_size_mm", 1.0)
    n = _scalar(attrs, "image_size", n_det, int)
    ds = _scalar(attrs, "detector_spacing", px)
    for key, v in (("pixel_size", px), ("detector_spacing", ds)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: attribute {key} must be a positive length (mm), got {v}")
    if not 2 <= n <= max(8192, 4 * n_det):
        raise ValueError(f"{where}: attribute image_size must be in [2, max(8192, 4 x "
                         f"n_detectors)], got {n}")
    info: dict[str, Any] = {"geometry": kind, "n_angles": n_angles, "n_detectors": n_det,
                            "image_size": n, "pixel_size_mm": px, "detector_spacing_mm": ds,
                            "angles_first_last_deg": [float(np.degrees(angles[0])),
                                                      float(np.degrees(angles[-1]))]}
    t = torch.from_numpy(angles)
    if kind == "parallel":
        geo = ParallelBeam(n, t, n_det, ds, px)
    else:
        missing = [k for k in ("source_distance", "detector_distance") if k not in attrs]
        if missing:
            raise ValueError(f"{where}: a fan-beam geometry needs the attributes {missing} (mm)")
        det = _scalar(attrs, "detector", "equiangular", str)
        r, d = _scalar(attrs, "source_distance"), _scalar(attrs, "detector_distance")
        geo = FanBeam(n, t, r, d, n_det, ds, det, px)
        info.update(source_distance_mm=r, detector_distance_mm=d, detector=det)
    return geo, info


def _full_fan(geo) -> bool:
    """True when fan-beam angles cover 2 pi (else a short scan is attempted)."""
    a = torch.sort(torch.remainder(geo.angles, 2 * math.pi)).values
    gaps = torch.diff(torch.cat((a, a[:1] + 2 * math.pi)))
    return float(gaps.max()) <= 1.5 * 2 * math.pi / max(1, a.numel())


# ------------------------------------------------------------------------------- reading
def _npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, its declared size checked against the file and the read cap first
    (memory-mapping fails when the header claims more bytes than the file holds)."""
    from medrecon.datasets.limits import check_read_size

    m = np.load(path, mmap_mode="r", allow_pickle=False)
    check_read_size(m.nbytes, f"array {m.dtype} {m.shape}", path)
    return np.array(m)


def _npz_member(z, name: str, path: Path) -> np.ndarray:
    """One ``.npz`` member, its header's declared size checked against the member's size in the
    zip directory and the read cap before numpy allocates it."""
    from medrecon.datasets.limits import check_read_size

    info = z.zip.getinfo(name + ".npy")
    with z.zip.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(fh))
        head = fh.tell()
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_read_size(nbytes, f"array {name!r} {dtype} {shape}", path)
    if head + nbytes > info.file_size:
        raise ValueError(f"{path}: array {name!r} declares {dtype} {shape} ({nbytes} bytes) but its "
                         f"zip member holds {info.file_size - head} (corrupt file)")
    return z[name]


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    name = path.name.lower()
    if name.endswith(".npy"):
        return {"sinogram": _npy(path)}, {}
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: _npz_member(z, k, path) for k in z.files}
        data = {k: arrays.pop(k) for k in list(arrays) if k in _DATA_KEYS + ("reference_hu", "image_hu")}
        return data, arrays
    import h5py

    from medrecon.datasets.limits import check_h5_dataset

    with h5py.File(path, "r") as f:
        data = {}
        for k in _DATA_KEYS + ("reference_hu", "angles"):
            if k in f and isinstance(f[k], h5py.Dataset):
                check_h5_dataset(f[k], path, k)
                data[k] = np.asarray(f[k])
        attrs = {k: f.attrs[k] for k in f.attrs}
    if "angles" in data:
        attrs["angles"] = data.pop("angles")
    return data, attrs


def _select(x: np.ndarray, rows: range) -> np.ndarray:
    return x[rows.start:rows.stop]


def read_ct_input(path, options: dict, slices: str | None = None) -> CTScan:
    """Read ``path`` (module doc) with the options ``dose``, ``i0``, ``sigma_e``, ``noise_seed``,
    ``n_angles`` (DICOM) and select ``slices`` (``"a:b"``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file() and p.name.lower().endswith(SINOGRAM_SUFFIXES):
        return _read_sinogram_checked(p, slices)
    return _read_dicom(p, options, slices)


def count_slices(path) -> int:
    """The number of slices of a CT input (sinogram file or DICOM CT series), without simulating
    or reconstructing anything."""
    p = Path(path)
    if p.is_file() and p.name.lower().endswith(SINOGRAM_SUFFIXES):
        data, _ = _read_arrays(p)
        key = next((k for k in ("sinogram_lowdose", "sinogram", "counts") if k in data), None)
        if key is None:
            raise ValueError(f"{p}: no sinogram found")
        return 1 if np.ndim(data[key]) == 2 else int(np.shape(data[key])[0])
    from medrecon.datasets.dicom import read_dicom_series

    return int(read_dicom_series(p).volume.shape[0])


def _read_sinogram_checked(p: Path, slices) -> CTScan:
    """`_read_sinogram_file` with every error of a corrupt file as a ValueError naming ``p``
    (numpy, zipfile and h5py raise many types on truncated or bit-flipped files)."""
    import tokenize
    import zipfile

    from medrecon.datasets.limits import reader_errors

    with reader_errors(p, "not a readable sinogram file", (
            OSError, EOFError, zipfile.BadZipFile, KeyError, TypeError, IndexError, OverflowError,
            RuntimeError, SyntaxError, tokenize.TokenError)):  # SyntaxError...: npy header
        return _read_sinogram_file(p, slices)


def _read_sinogram_file(p: Path, slices) -> CTScan:
    from medrecon.physics.ct import MU_WATER, log_transform
    from medrecon.inputs import parse_slices

    data, attrs = _read_arrays(p)
    sim = _scalar(attrs, "format", "", str) == "medrecon-ct-sim" or "sinogram_lowdose" in data
    key = "sinogram_lowdose" if sim else next((k for k in ("sinogram", "counts") if k in data), None)
    if key is None:
        raise ValueError(f"{p}: no dataset 'sinogram' (line integrals) or 'counts' (photons) found; "
                         f"it holds {sorted(data)}")
    y = np.asarray(data[key])
    if y.ndim == 2:
        y = y[None]
    if (y.ndim != 3 or min(y.shape) < 1 or not np.issubdtype(y.dtype, np.number)
            or np.iscomplexobj(y)):
        raise ValueError(f"{p}: {key} must be a real array [n_angles, n_detectors] or [slices, "
                         f"n_angles, n_detectors], got {y.dtype} {y.shape}")
    rows = parse_slices(slices, y.shape[0])
    y = torch.from_numpy(_select(y, rows).astype(np.float64))
    if not torch.isfinite(y).all():
        raise ValueError(f"{p}: {key} contains NaN or Inf")
    if not bool((y != 0).any()) and key != "counts":
        raise ValueError(f"{p}: {key} is all zero (no attenuation measured); there is nothing "
                         "to reconstruct")
    geo, info = geometry_from_attrs(attrs, y.shape[1], y.shape[2], str(p))
    if key == "counts":
        if "i0" not in attrs:
            raise ValueError(f"{p}: 'counts' needs the attribute i0 (incident photons per element)")
        y = log_transform(y, _scalar(attrs, "i0"))
        info["data"] = "counts (log-transformed with i0)"
    else:
        info["data"] = key
    mw = _scalar(attrs, "mu_water", MU_WATER)
    ref = None
    if sim and "sinogram" in data:
        ref_sino = torch.from_numpy(_select(np.asarray(data["sinogram"]), rows).astype(np.float64))
        ref = ("sinogram", ref_sino)
    elif "reference_hu" in data or "image_hu" in data and not sim:
        r = np.asarray(data.get("reference_hu", data.get("image_hu")), np.float32)
        r = r[None] if r.ndim == 2 else r
        ref = ("image", _select(r, rows))
    short = geo.__class__.__name__ == "FanBeam" and not _full_fan(geo)
    px = geo.pixel_size
    thick = _scalar(attrs, "slice_thickness", None) or _scalar(attrs, "slice_thickness_mm", px)
    scan = CTScan(p, "sinogram", geo, y, short_scan=short, mu_water=mw,
                  affine=_axial_affine(geo.image_size, px, thick, rows.start, y.shape[0]),
                  info={**info, "short_scan": short}, n_slices_total=rows.stop - rows.start)
    scan.info["slices"] = [rows.start, rows.stop]
    if ref is not None and ref[0] == "image":
        if ref[1].shape != (y.shape[0], geo.image_size, geo.image_size):
            raise ValueError(f"{p}: reference_hu has shape {ref[1].shape}, expected "
                             f"{(y.shape[0], geo.image_size, geo.image_size)}")
        scan.reference_hu = ref[1]
    elif ref is not None:
        scan.reference_hu = ref  # noise-free sinogram: FBP'd with the method's filter later
    return scan


def _axial_affine(n: int, px: float, thick: float, first: int, n_slices: int) -> np.ndarray:
    from medrecon.datasets.geometry import dicom_affine

    c = (n - 1) / 2 * px
    return dicom_affine((1, 0, 0, 0, 1, 0), (px, px), (-c, -c, first * thick), thick)


def _read_dicom(p: Path, options: dict, slices) -> CTScan:
    from medrecon.datasets.dicom import read_dicom_series
    from medrecon.image_inputs import slab_series
    from medrecon.physics.ct import MU_WATER, simulate_lowdose
    from medrecon.inputs import parse_slices

    series = read_dicom_series(p)
    if series.modality.upper() != "CT":
        raise ValueError(f"{p}: DICOM Modality is {series.modality or 'missing'!r}, not CT; CT "
                         "methods need a CT series (MR series go to the MRI methods)")
    vol = series.volume
    s, r, c = vol.shape
    if r != c:
        raise ValueError(f"{p}: CT slices must be square (N x N) for the projector, got {r} x {c}")
    dr, dc = series.pixel_spacing
    if abs(dr - dc) > 1e-3 * max(dr, dc):
        raise ValueError(f"{p}: pixels must be square, PixelSpacing is {dr} x {dc} mm")
    rows = parse_slices(slices, s)
    hu = vol[rows.start:rows.stop].astype(np.float64)
    slab = slab_series(series, rows)
    dose = options.get("dose", "normal")
    info = {"pixel_size_mm": float(dr), "image_size": r, "dose": dose,
            "slices": [rows.start, rows.stop]}
    if dose == "low":
        return CTScan(p, "dicom", ldct_hu=hu.astype(np.float32), affine=slab.affine, series=slab,
                      info=info, simulation=None, n_slices_total=len(rows))
    if dose != "normal":
        raise ValueError(f"option dose: expected 'normal' (simulate a low-dose scan of the series) "
                         f"or 'low' (the series is the LDCT image), got {dose!r}")
    n_angles = int(options.get("n_angles") or (3 * r) // 2)
    if n_angles < 2:
        raise ValueError(f"option n_angles: expected >= 2, got {n_angles}")
    geo = whole_slice_geometry(r, n_angles, float(dr))
    n_det = geo.n_detectors
    i0, sigma_e = float(options.get("i0", 1e4)), float(options.get("sigma_e", 5.0))
    seed = int(options.get("noise_seed", 0))
    clean = project_hu(geo, torch.from_numpy(hu))
    low = torch.empty_like(clean)
    for k in range(clean.shape[0]):  # slice k: noise_seed + absolute slice index
        g = torch.Generator().manual_seed(seed + rows.start + k)
        low[k] = simulate_lowdose(clean[k], i0, sigma_e, g)
    sim = {"kind": "lowdose", "i0": i0, "sigma_e": sigma_e, "noise_seed": seed,
           "geometry": "parallel", "n_angles": n_angles, "angles": "evenly over [0, 180) deg",
           "detector_spacing_mm": float(dr), "n_detectors": n_det,
           "projector": "whole square (circle=False), HU clipped at -1000",
           "reference": "FBP of the noise-free projections"}
    info.update(geometry="parallel", n_angles=n_angles, n_detectors=n_det,
                detector_spacing_mm=float(dr))
    return CTScan(p, "dicom", geo, low, reference_hu=("sinogram", clean), mu_water=MU_WATER,
                  affine=slab.affine, series=slab, simulation=sim, info=info,
                  n_slices_total=len(rows))


def whole_slice_geometry(n: int, n_angles: int, pixel_mm: float):
    """The parallel beam that measures a whole N x N slice, as a scanner measures the body
    (module docstring): ``n_angles`` views evenly over [0, pi), ``ceil(sqrt(2) N)`` detectors at
    the pixel spacing, ``circle=False``."""
    from medrecon.physics.ct import ParallelBeam

    angles = torch.arange(int(n_angles), dtype=torch.float64) * (math.pi / int(n_angles))
    return ParallelBeam(n, angles, math.ceil(math.sqrt(2) * n), detector_spacing=pixel_mm,
                        pixel_size=pixel_mm, circle=False)


def project_hu(geometry, hu: torch.Tensor) -> torch.Tensor:
    """Noise-free line integrals of HU slices, HU clipped below at -1000 (air: a scanner's -2000 /
    -3024 padding outside its FOV attenuates nothing)."""
    from medrecon.physics.ct import MU_WATER, hu_to_mu

    return geometry.forward(hu_to_mu(hu.double().clamp(min=-1000.0), MU_WATER))


def write_sinogram(path, sinogram, *, geometry: str = "parallel", angles=None, overwrite=False,
                   counts: bool = False, reference_hu=None, **attrs) -> Path:
    """Write a sinogram file in the documented ``.h5`` layout (atomically): ``sinogram`` (or
    ``counts`` with ``counts=True``; pass ``i0=``), ``angles`` (radians), geometry attributes."""
    from medrecon.datasets.fastmri import atomic_h5

    y = np.asarray(sinogram.detach().cpu() if hasattr(sinogram, "detach") else sinogram)
    with atomic_h5(path, overwrite) as f:
        f.create_dataset("counts" if counts else "sinogram", data=y.astype(np.float32))
        if angles is not None:
            a = angles.detach().cpu().numpy() if hasattr(angles, "detach") else np.asarray(angles)
            f.create_dataset("angles", data=np.asarray(a, np.float64))
        if reference_hu is not None:
            f.create_dataset("reference_hu", data=np.asarray(reference_hu, np.float32))
        f.attrs["geometry"] = geometry
        for k, v in attrs.items():
            f.attrs[k] = v
    return Path(path)
