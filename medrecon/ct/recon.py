"""``medrecon recon`` for CT: FBP, latent cold diffusion and the pixel DDPM on CT inputs.

Inputs (`medrecon.ct.inputs`): a DICOM CT series (by default a low-dose scan of it is simulated
with ``i0`` / ``sigma_e`` / ``noise_seed`` / ``n_angles``; ``-o dose=low`` takes the series as the
LDCT image itself) or a sinogram file (``.h5`` / ``.npz`` / ``.npy``, geometry in attributes).

Methods (``CT_METHODS``), options as ``-o KEY=VALUE``:

- ``fbp``: filtered backprojection of the (low-dose) sinogram, ``filter`` (ramp, shepp-logan,
  cosine, hamming, hann; default ramp); fan-beam scans shorter than 2 pi use Parker weights.
- ``latent-cold-diffusion``: FBP (``filter``) -> HU / 1000 -> E -> cold sampling (Bansal et al.
  Algorithm 2, ``steps`` <= T, default T; ``algorithm`` improved | naive) -> D -> HU.
  ``checkpoint``: a ``medrecon train --recipe ct-latent-cold`` run folder (``autoencoder/`` +
  ``latent/``), or the latent checkpoint with ``autoencoder=DIR``.
- ``pixel-ddpm``: FBP -> HU / 1000 as the condition -> ``medrecon.sample`` with ``solver``
  (default ddim), ``steps`` (default 50), ``eta`` (DDIM), ``clip_x0`` (``none`` default, or a
  bound B: each x0 estimate is clipped to [-B, B] in HU / 1000) and ``ldct_above`` (a timestep
  t_c: above it the x0 estimate is the LDCT and the network is skipped; both keep DDIM eta=0 /
  DPM-Solver++ of an under-trained model from diverging, ``medrecon.ct.pixel_ddpm``);
  ``checkpoint``: a ``ct-pixel-ddpm`` checkpoint.  The noise comes from ``--sample-seed``
  (default 0; the batch starting at slice k uses seed + k).

The networks need slices of the size they were trained at (checked).  Outputs: ``--out`` a
``.nii``/``.nii.gz`` file (NIfTI in HU + JSON sidecar), a ``.h5`` file (dataset
``reconstruction`` in HU + the record as attrs) or a folder (``--format dicom``, the default for a
folder: a derived CT series in HU with SeriesDescription ``medrecon <method>`` and the options,
NFE, time and seed in DerivationDescription; a DICOM input's geometry is kept and its patient
and study are de-identified unless ``--keep-phi``, `medrecon.datasets.deid`).  Existing outputs are refused before any work unless ``--overwrite``; all writes are
atomic.  ``--json`` prints one record per input with the MRI schema of `medrecon.pipeline`
(``mask`` null, ``simulation`` the dose simulation, ``metrics`` = ``{"rmse_hu", "psnr",
"ssim"}`` of `medrecon.ct.evaluate.ct_metrics` against the reference when there is one) plus
``"units": "HU"`` and ``"geometry"``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inputs import CTScan, is_ct_input, read_ct_input

__all__ = ["CT_METHODS", "is_ct_input", "run_cli", "reconstruct_ct", "CT_OPTIONS"]

CT_METHODS: tuple[str, ...] = ("fbp", "latent-cold-diffusion", "pixel-ddpm")
_INPUT_OPTIONS = {"dose": str, "i0": float, "sigma_e": float, "noise_seed": int, "n_angles": int}
CT_OPTIONS: dict[str, dict[str, type]] = {
    "fbp": {"filter": str},
    "latent-cold-diffusion": {"filter": str, "checkpoint": str, "autoencoder": str, "steps": int,
                              "algorithm": str},
    "pixel-ddpm": {"filter": str, "checkpoint": str, "solver": str, "steps": int, "eta": float,
                   "clip_x0": str, "ldct_above": int},
}


def _parse_options(method: str, pairs: list[str]) -> dict[str, Any]:
    if method not in CT_METHODS:
        raise ValueError(f"--method {method!r} is not a CT method; CT inputs take one of "
                         f"{', '.join(CT_METHODS)}")
    types = {**CT_OPTIONS[method], **_INPUT_OPTIONS}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        if key not in types:
            raise ValueError(f"--option {key}: method {method!r} has no option {key!r}; valid: "
                             f"{', '.join(sorted(types))}")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise ValueError(f"--option {key}={value!r}: expected {types[key].__name__}") from None
    f = out.get("filter", "ramp")
    from medrecon.physics.ct import FILTERS

    if f not in FILTERS:
        raise ValueError(f"--option filter={f!r}: expected one of {', '.join(FILTERS)}")
    if "steps" in out and out["steps"] < 1:
        raise ValueError(f"--option steps: expected >= 1, got {out['steps']}")
    if "i0" in out and not out["i0"] > 0:
        raise ValueError(f"--option i0: the incident flux must be > 0 photons, got {out['i0']}")
    if "sigma_e" in out and out["sigma_e"] < 0:
        raise ValueError(f"--option sigma_e: expected >= 0, got {out['sigma_e']}")
    if method != "fbp" and "checkpoint" not in out:
        recipe = "ct-latent-cold" if method == "latent-cold-diffusion" else "ct-pixel-ddpm"
        raise ValueError(f"method {method!r} needs -o checkpoint=DIR (train one with "
                         f"`medrecon train --recipe {recipe}`)")
    return out


# ------------------------------------------------------------------------------- models
class _Models:
    """Loaded networks, cached over the inputs of one run."""

    def __init__(self, method: str, options: dict, device: torch.device) -> None:
        self.method, self.options, self.device = method, options, device
        self.size = None
        if method == "latent-cold-diffusion":
            from .autoencoder import load_autoencoder
            from .cold_diffusion import load_cold_diffusion

            ck = Path(options["checkpoint"])
            lat, ae = ck, options.get("autoencoder")
            if ae is None and (ck / "latent").is_dir():
                lat, ae = ck / "latent", ck / "autoencoder"
            if ae is None:
                raise ValueError(f"-o checkpoint={ck}: not a ct-latent-cold run folder (no latent/ and "
                                 "autoencoder/ inside); pass -o autoencoder=DIR with a latent checkpoint")
            self.ae = load_autoencoder(ae, device)
            self.cold = load_cold_diffusion(lat, device)
            steps = options.get("steps")
            if steps is not None and steps > self.cold.T:
                raise ValueError(f"--option steps={steps}: the cold schedule has T = {self.cold.T} steps")
            self.size = _trained_size(lat) or _trained_size(ae)
        elif method == "pixel-ddpm":
            from .pixel_ddpm import load_pixel_ddpm

            self.pixel = load_pixel_ddpm(options["checkpoint"], device)
            self.size = _trained_size(Path(options["checkpoint"]))
            from medrecon.sample import SOLVERS

            if options.get("solver", "ddim") not in SOLVERS:
                raise ValueError(f"--option solver={options['solver']!r}: expected one of {', '.join(SOLVERS)}")

    def check_size(self, n: int, where) -> None:
        if self.size is not None and n != self.size:
            raise ValueError(f"{where}: the {self.method} networks were trained on {self.size} x "
                             f"{self.size} slices, this input has {n} x {n}; resample the input or "
                             "train at that size (--recipe-option size=N)")

    def __call__(self, ldct: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
        """Denoise normalised LDCT ``[B, 1, N, N]``; returns (image, NFE per slice batch)."""
        x = ldct.to(self.device, torch.float32)
        if self.method == "latent-cold-diffusion":
            from .cold_diffusion import reconstruct_cold

            out, nfe = reconstruct_cold(self.cold, self.ae, x, self.options.get("steps"),
                                        self.options.get("algorithm", "improved"))
            return out, nfe
        from .pixel_ddpm import sample_pixel_ddpm

        opts = {}
        if "eta" in self.options:
            opts["eta"] = self.options["eta"]
        clip = _clip_value(self.options.get("clip_x0", "none"))
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        return sample_pixel_ddpm(self.pixel, x, self.options.get("solver", "ddim"),
                                 self.options.get("steps", 50), generator=g, clip_x0=clip,
                                 ldct_above=self.options.get("ldct_above"), **opts)


def _clip_value(v) -> float | None:
    if v is None or str(v).lower() in ("none", "", "0", "false"):
        return None
    try:
        b = float(v)
    except ValueError:
        raise ValueError(f"--option clip_x0={v!r}: expected 'none' or a positive bound (HU / 1000)") from None
    if not b > 0:
        raise ValueError(f"--option clip_x0: expected a positive bound, got {b}")
    return b


def _trained_size(directory: Path) -> int | None:
    cfg = directory / "config.json"
    if not cfg.is_file():
        return None
    extra = json.loads(cfg.read_text()).get("extra", {})
    size = extra.get("data", {}).get("size") if isinstance(extra, dict) else None
    return int(size) if size else None


# ------------------------------------------------------------------------------- recon
def _fbp_hu(scan: CTScan, sinogram: torch.Tensor, filt: str) -> torch.Tensor:
    from medrecon.physics.ct import fbp, mu_to_hu

    return mu_to_hu(fbp(sinogram, scan.geometry, filt, short_scan=scan.short_scan), scan.mu_water)


def reconstruct_ct(scan: CTScan, method: str, options: dict, models: _Models | None = None,
                   seed: int = 0, batch_size: int = 0) -> tuple[np.ndarray, dict]:
    """``(HU volume [S, N, N] float32, info)`` where info has ``nfe``, ``seconds``, ``metrics``."""
    from .data import from_hu
    from .evaluate import ct_metrics

    filt = options.get("filter", "ramp")
    t0 = time.perf_counter()
    if scan.ldct_hu is not None:
        if method == "fbp":
            raise ValueError(f"{scan.path}: with -o dose=low the series already is the (FBP) LDCT "
                             "image; fbp has nothing to reconstruct (use a denoising method)")
        ldct = torch.from_numpy(scan.ldct_hu).double()
    else:
        ldct = _fbp_hu(scan, scan.sinogram, filt)
    nfe = 0
    if method == "fbp":
        out = ldct
    else:
        models.check_size(scan.image_size, scan.path)
        x = from_hu(ldct).float()[:, None]
        b = batch_size or x.shape[0]
        parts = []
        for i in range(0, x.shape[0], b):
            y, nfe = models(x[i:i + b], seed + i)
            parts.append(y.detach().cpu())
        out = (torch.cat(parts)[:, 0].double() * 1000.0)
    seconds = time.perf_counter() - t0
    out_np = out.cpu().numpy().astype(np.float32)
    if not np.isfinite(out_np).all():
        raise ValueError(f"{scan.path}: {method} produced NaN or Inf")
    ref = scan.reference_hu
    if isinstance(ref, tuple):
        ref = _fbp_hu(scan, ref[1], filt).cpu().numpy().astype(np.float32)
    metrics = None
    if ref is not None:
        r = torch.from_numpy(np.asarray(ref, np.float32))[:, None] / 1000.0
        try:
            metrics = ct_metrics(r, torch.from_numpy(out_np)[:, None] / 1000.0)
        except ValueError:  # no pixel inside the body: nothing to score
            metrics = None
    return out_np, {"nfe": int(nfe), "seconds": seconds, "metrics": metrics}


# ------------------------------------------------------------------------------- output
def output_path(out, src: Path, n_inputs: int, fmt: str | None) -> tuple[Path | None, str | None]:
    """(path, format): a ``.nii``/``.nii.gz``/``.h5`` file, or a folder (default format dicom)."""
    from medrecon.pipeline import output_target

    if out is None:
        return None, None
    return output_target(out, src, n_inputs, fmt, default="dicom")


def _check_writable(out: Path, fmt: str, overwrite: bool) -> None:
    from medrecon.pipeline import check_writable

    check_writable(out, fmt, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)


def write_ct_output(out: Path, fmt: str, hu: np.ndarray, record: dict, scan: CTScan,
                    overwrite: bool, keep_phi: bool = False) -> Path:
    """Write the HU volume with the record's metadata (module doc); atomic.  A DICOM output is
    de-identified (`medrecon.datasets.deid`) unless ``keep_phi``; every output records the
    input's file name, never its path."""
    from medrecon.datasets.geometry import lps_to_ras

    meta = {"software": "medrecon", "units": "HU",
            **{k: record.get(k) for k in ("method", "options", "nfe", "seconds", "seed", "file",
                                          "slices", "input_format", "simulation", "geometry")}}
    if meta["file"] is not None:
        meta["file"] = Path(str(meta["file"])).name
    if fmt == "nifti":
        from medrecon.datasets.nifti import write_nifti
        return write_nifti(hu, out, lps_to_ras(scan.affine), overwrite=overwrite, sidecar=meta)
    if fmt == "dicom":
        from medrecon.datasets.dicom import write_dicom_series
        params = json.dumps({k: meta[k] for k in ("options", "nfe", "seconds", "seed", "simulation")})
        geometry = {"reference": scan.series} if scan.series is not None else {"affine": scan.affine}
        return write_dicom_series(np.rint(hu).clip(-1024, None), out, modality="CT",
                                  anonymize=not keep_phi,
                                  series_description=f"medrecon {record['method']}",
                                  derivation_description=f"medrecon {record['method']} (HU) {params}",
                                  window=(40.0, 400.0), overwrite=overwrite, **geometry)
    if fmt == "h5":
        from medrecon.datasets.fastmri import atomic_h5
        with atomic_h5(out, overwrite) as f:
            f.create_dataset("reconstruction", data=hu.astype(np.float32))
            for key, val in {**meta, "affine_lps": np.asarray(scan.affine).tolist()}.items():
                if val is not None:
                    f.attrs[key] = json.dumps(val) if isinstance(val, (dict, list)) else val
        return out
    raise ValueError(f"output format must be one of h5, nifti, dicom, got {fmt!r}")


# ------------------------------------------------------------------------------- CLI
def run_cli(args, inputs: list[Path]) -> int:
    """``medrecon recon`` on CT inputs (namespace fields: method, out, format, overwrite, json,
    option, device, sample_seed, quiet, slices, batch_size).  Returns 0, or 1 if an input failed."""
    from medrecon.metrics import fmt_metric

    method = args.method
    options = _parse_options(method, list(getattr(args, "option", []) or []))
    device = torch.device(getattr(args, "device", None) or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    files = [Path(p) for p in inputs]
    plans = [output_path(getattr(args, "out", None), src, len(files), getattr(args, "format", None))
             for src in files]
    for out, fmt in plans:  # refuse existing outputs before any work
        if out is not None:
            _check_writable(out, fmt, bool(getattr(args, "overwrite", False)))
    models = _Models(method, options, device) if method != "fbp" else None
    seed = getattr(args, "sample_seed", None)
    batch = int(getattr(args, "batch_size", 0) or 0)
    failed = 0
    for src, (out, fmt) in zip(files, plans):
        try:
            scan = read_ct_input(src, options, getattr(args, "slices", None))
            hu, info = reconstruct_ct(scan, method, options, models, seed or 0,
                                      batch if batch > 1 else 0)
            rows = scan.info.get("slices") or [0, hu.shape[0]]
            record = {"file": str(src), "method": method, "options": options, "nfe": info["nfe"],
                      "seconds": round(info["seconds"], 4),
                      "seconds_per_slice": round(info["seconds"] / hu.shape[0], 4),
                      "slices": rows, "shape": list(hu.shape), "recon_size": list(hu.shape[-2:]),
                      "mask": None, "metrics": info["metrics"], "input_format": scan.kind,
                      "simulation": scan.simulation, "seed": seed, "output": None,
                      "units": "HU", "geometry": scan.info}
            if out is not None:
                record["output"] = str(write_ct_output(out, fmt, hu, record, scan,
                                                       bool(getattr(args, "overwrite", False)),
                                                       bool(getattr(args, "keep_phi", False))))
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            failed += 1
            print(f"medrecon recon: error: {src}: {exc}", file=sys.stderr)
            continue
        if getattr(args, "json", False):
            print(json.dumps(record, allow_nan=False), flush=True)
        elif not getattr(args, "quiet", False):
            m = record["metrics"]
            score = (f"RMSE {m['rmse_hu']:.1f} HU  PSNR {fmt_metric(m['psnr'], '.2f')} dB  "
                     f"SSIM {m['ssim']:.4f}" if m else "no reference")
            dest = f" -> {record['output']}" if record["output"] else ""
            print(f"{src.name}: {method} {record['seconds']:.2f} s  {score}{dest}")
    return 1 if failed else 0
