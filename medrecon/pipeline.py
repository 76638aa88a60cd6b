"""``reconstruct_file``: a whole volume through one method, slice by slice.

Inputs (`medrecon.image_inputs.input_kind`): a fastMRI HDF5 file (k-space), or a DICOM MR
series / NIfTI volume (images: k-space simulated retrospectively, `medrecon.image_inputs`).
This is what ``medrecon recon`` runs for each input; notebooks and pipelines call it directly
and get the same record the CLI prints with ``--json``:

``{"file", "method", "options", "nfe", "seconds", "seconds_per_slice", "slices", "shape",
"recon_size", "mask", "metrics", "input_format", "simulation", "seed", "output"}`` where
``mask`` is ``"file"`` (the file's own mask: test/challenge data) or ``{"kind",
"acceleration", "center_fraction", "seed", "sampled_fraction"}`` (retrospective undersampling),
``nfe`` is network evaluations per slice, ``seconds`` the reconstruction time of the volume
(sensitivity estimation included, file I/O excluded), and ``metrics`` = ``{"nmse", "psnr",
"ssim"}`` (fastMRI conventions) against the fully sampled RSS image at the recon matrix for a
fully sampled fastMRI file, against the input magnitudes for an image input, else ``null``;
``input_format`` is ``"fastmri"``, ``"dicom"`` or ``"nifti"``; ``simulation`` is ``null`` for
k-space inputs, else ``{"kind", "coils", "phase", "phase_encoding", "reference"}``; ``seed`` is
the sampling seed of diffusion methods (``null``: the method's default).

``out`` is written in the format of its extension (`output_format`): ``.h5`` the fastMRI
submission file with the record's metadata (and the LPS affine, ``affine_lps``) as HDF5 attrs,
``.nii``/``.nii.gz`` NIfTI with a JSON sidecar, a folder (``out_format="dicom"`` or a path string
ending in ``/``) a DICOM MR series (SeriesDescription ``"medrecon <method>"``,
DerivationDescription with the options, NFE, time, seed and mask).  Geometry: a NIfTI input's
own affine, a DICOM input's own grid (a DICOM output then also keeps its study context,
de-identified unless ``keep_phi``), for fastMRI the ISMRMRD recon FOV/matrix (`recon_affine`); with
``slices`` the grid starts at the first selected slice.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medrecon.datasets.fastmri import FastMRIFile, ISMRMRDHeader, atomic_h5, center_crop
from medrecon.datasets.publish import printable
from medrecon.metrics import evaluate
from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import make_mask
from medrecon.provenance import medrecon_version, prior_digest
from medrecon.reconstruct import reconstruct

__all__ = ["MaskSpec", "reconstruct_file", "parse_slices", "output_format", "output_name", "output_target", "recon_affine",
           "write_output", "check_writable", "output_paths", "input_paths", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("h5", "nifti", "dicom")


@dataclass(frozen=True)
class MaskSpec:
    """Retrospective undersampling: a `medrecon.physics.masks.make_mask` call."""

    kind: str = "equispaced_fraction"
    acceleration: float = 4
    center_fraction: float = 0.08
    seed: int | None = 0


def parse_slices(spec: str | None, n: int) -> range:
    """``"a:b"`` / ``"a"`` / None -> a range of slice indices, checked against ``n`` slices."""
    if spec is None or spec == "":
        return range(n)
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            r = range(*slice(int(a) if a else None, int(b) if b else None).indices(n))
        else:
            i = int(spec)
            r = range(i, i + 1)
    except ValueError:
        raise ValueError(f"slices must look like 'a:b' or 'i', got {spec!r}") from None
    if len(r) == 0 or r.start >= n or r.stop > n:
        raise ValueError(f"slices {spec!r} select nothing in a volume of {n} slices")
    return r


def reconstruct_file(path, method: str = "cg-sense", mask: MaskSpec | None = None,
                     slices: str | None = None, out=None, overwrite: bool = False,
                     progress: bool = False, device: str | None = None,
                     seed: int | None = None, out_format: str | None = None,
                     batch_size: int = 1, coils: int = 1, keep_phi: bool = False,
                     allow_irregular_spacing: bool = False, **options) -> dict[str, Any]:
    """Reconstruct the selected slices of a fastMRI file, DICOM MR series or NIfTI volume
    (`medrecon.image_inputs.input_kind`); write ``out`` if given.

    ``seed`` seeds the sampler of each call (diffusion methods); ``batch_size`` slices are
    reconstructed per call (stochastic methods then draw different noise than one by one);
    ``out_format`` overrides the format inferred from ``out`` (one of `OUTPUT_FORMATS`);
    ``coils`` is the number of simulated coils for image inputs (`medrecon.image_inputs`).
    ``progress`` shows a bar over the slices and, for diffusion methods, one over the network
    evaluations.  Before any work: an ``out`` that is (or lies inside, or holds) the input is
    refused whatever ``overwrite`` says (`medrecon.datasets.publish.refuse_input_overlap`), an
    existing ``out`` unless ``overwrite``, and an output folder that cannot be written.
    ``keep_phi`` keeps a DICOM input's patient/study identifiers in a DICOM output (default:
    de-identified); ``allow_irregular_spacing`` reads image inputs whose slices are unevenly
    spaced (`medrecon.image_inputs.read_image_volume`).
    """
    from medrecon.image_inputs import input_kind

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask = mask or MaskSpec()
    fmt = output_format(out, out_format) if out is not None else None
    if out is not None:
        from medrecon.datasets.publish import refuse_input_overlap

        refuse_input_overlap(output_paths(out, fmt), input_paths(path))
        check_writable(out, fmt, overwrite)
        if not Path(out).parent.is_dir():
            raise FileNotFoundError(f"{printable(Path(out).parent)}: output folder does not "
                                    "exist")
    run = _Runner(printable(Path(path).name), method, seed, device, progress, options,
                  batch_size)
    if input_kind(path) == "fastmri":
        pred, record, affine, reference = _fastmri_volume(path, mask, slices, batch_size, run)
    else:
        pred, record, affine, reference = _image_volume(path, mask, slices, batch_size, coils,
                                                        run, allow_irregular_spacing)
    if out is not None:
        record["output"] = str(write_output(out, pred, record, affine, fmt, overwrite,
                                            reference=reference, keep_phi=keep_phi))
    return record


class _Runner:
    """One method over the batches of a volume: timing, NFE, and the progress bars."""

    def __init__(self, name, method, seed, device, progress, options, batch_size):
        from medrecon.registry import get_method, options_to_dict, resolve_options

        spec = get_method(method)
        self.method, self.seed, self.device, self.options = method, seed, device, options
        self.progress, self.name, self.batch_size = progress, name, batch_size
        self.diffusion = spec.kind == "diffusion"
        self.seconds, self.nfe, self.blank = 0.0, 0, 0
        self.used = options_to_dict(resolve_options(spec, options))  # fail before any reading

    def _reconstruct(self, k, m, smaps):
        if self.device:
            k = k.to(self.device)
            smaps = smaps.to(self.device) if smaps is not None else None
        if not bool((k != 0).any()) and bool(m.any()):
            # a blank slice (the empty edge slices of many volumes): its image is zero; a volume
            # with no signal at all is refused in __call__
            from medrecon.reconstruct import ReconResult

            self.blank += 1 if k.dim() == 3 else k.shape[0]
            image = torch.zeros(k.shape[:-3] + k.shape[-2:], dtype=torch.complex64, device=k.device)
            return k, ReconResult(image, self.method, self.used, self.nfe, 0.0)
        res = reconstruct(k, m.to(k.device), self.method, smaps=smaps, seed=self.seed,
                          **self.options)
        self.seconds += res.seconds
        self.nfe, self.used = res.nfe, res.options
        return k, res

    def __call__(self, batches, n_slices: int):
        """Yield ``(batch, kspace, result)`` for each ``(batch, kspace, mask, smaps)``."""
        from medrecon.progress import count_network_calls, step_total

        runs = -(-n_slices // self.batch_size)
        bar = tqdm(total=n_slices, desc=f"{self.name} [{self.method}]", unit="slice",
                   disable=not self.progress, leave=False)
        steps = None
        if self.progress and self.diffusion:  # network evaluations, all runs of the volume
            est = step_total(self.used)
            steps = tqdm(total=est * runs if est else None, desc="  sampling", unit="NFE",
                         leave=False)
        try:
            for i, (batch, k, m, smaps) in enumerate(batches):
                if steps is None:
                    k, res = self._reconstruct(k, m, smaps)
                else:
                    before = steps.n
                    with count_network_calls(steps.update):
                        k, res = self._reconstruct(k, m, smaps)
                    if i == 0 and steps.n > before:  # the exact count, from the first run
                        steps.total = (steps.n - before) * runs
                        steps.refresh()
                yield batch, k, res
                bar.update(len(batch))
            if self.blank == n_slices:
                raise ValueError(f"k-space is all zero in every selected slice ({n_slices}); "
                                 "an all-zero measurement has no image to reconstruct")
        finally:
            bar.close()
            if steps is not None:
                steps.close()

    def record(self, path, rows: range, **fields) -> dict[str, Any]:
        return {"file": str(path), "method": self.method, "options": self.used, "nfe": self.nfe,
                "seconds": round(self.seconds, 4),
                "seconds_per_slice": round(self.seconds / len(rows), 4),
                "slices": [rows.start, rows.stop], **fields, "seed": self.seed, "output": None,
                "prior": prior_digest(self.used), "medrecon_version": medrecon_version()}


def _chunks(rows: range, batch_size: int):
    return [rows[j:j + batch_size] for j in range(0, len(rows), batch_size)]


def _fastmri_volume(path, mask: MaskSpec, slices, batch_size: int, run: _Runner):
    """fastMRI k-space: the file's own mask, or retrospective undersampling scored against RSS."""
    with FastMRIFile(path) as f:
        rows = parse_slices(slices, f.num_slices)
        H, W = f.shape[-2:]
        own = f.mask
        if own is not None:
            m = torch.from_numpy(own).view(1, W)
            mask_info: Any = "file"
        else:
            m = make_mask(mask.kind, (H, W), mask.acceleration, mask.center_fraction,
                          seed=mask.seed)
            mask_info = _mask_info(mask, m)
        crop = f.recon_size

        def batches():
            for batch in _chunks(rows, batch_size):
                k = torch.stack([f.read_slice(i)["kspace"] for i in batch])  # [B, (C,) H, W]
                if not f.is_multicoil:
                    k = k.unsqueeze(1)
                yield batch, (k[0] if batch_size == 1 else k), m, None

        preds, refs = [], []
        for _, k, res in run(batches(), len(rows)):
            preds.extend(center_crop(res.magnitude, crop).cpu().numpy().reshape(-1, *crop))
            if own is None:  # fully sampled input: the reference is its RSS image
                refs.extend(center_crop(rss(ifft2c(k)), crop).cpu().numpy().reshape(-1, *crop))
        pred = np.stack(preds).astype(np.float32)
        metrics = evaluate(np.stack(refs), pred) if refs else None
        record = run.record(path, rows, shape=list(f.shape), recon_size=list(crop),
                            mask=mask_info, metrics=metrics, input_format="fastmri",
                            simulation=None)
        affine = recon_affine(f.header, crop, rows.start, f.num_slices)
    return pred, record, affine, None


def _image_volume(path, mask: MaskSpec, slices, batch_size: int, coils: int, run: _Runner,
                  allow_irregular_spacing: bool = False):
    """DICOM/NIfTI magnitudes: simulated k-space (`medrecon.image_inputs`), scored against |v|."""
    from medrecon.image_inputs import read_image_volume, simulate_kspace, slab_series

    iv = read_image_volume(path, allow_irregular_spacing=allow_irregular_spacing)
    rows = parse_slices(slices, iv.volume.shape[0])
    transpose = iv.phase_encoding == "rows"
    H, W = iv.volume.shape[-2:][::-1] if transpose else iv.volume.shape[-2:]
    m = make_mask(mask.kind, (H, W), mask.acceleration, mask.center_fraction, seed=mask.seed)

    def batches():
        for batch in _chunks(rows, batch_size):
            k, smaps = simulate_kspace(torch.from_numpy(iv.volume[list(batch)]), coils,
                                       iv.phase_encoding)
            if batch_size == 1:
                yield batch, k[0], m, smaps
            else:
                yield batch, k, m, smaps.expand(len(batch), *smaps.shape)

    preds = []
    for _, _, res in run(batches(), len(rows)):
        mag = res.magnitude.reshape(-1, H, W)
        preds.extend((mag.transpose(-2, -1) if transpose else mag).cpu().numpy())
    pred = np.stack(preds).astype(np.float32)
    ref = np.abs(iv.volume[rows.start:rows.stop])
    simulation = {"kind": iv.kind, "coils": coils, "phase": "zero",
                  "phase_encoding": iv.phase_encoding, "reference": "input magnitude"}
    record = run.record(path, rows, shape=list(iv.volume.shape), recon_size=list(ref.shape[-2:]),
                        mask=_mask_info(mask, m), metrics=evaluate(ref, pred),
                        input_format=iv.kind, simulation=simulation)
    reference = slab_series(iv.series, rows) if iv.series is not None else None
    return pred, record, iv.slab_affine(rows.start), reference


def _mask_info(mask: MaskSpec, m: torch.Tensor) -> dict[str, Any]:
    return {"kind": mask.kind, "acceleration": mask.acceleration,
            "center_fraction": mask.center_fraction, "seed": mask.seed,
            "sampled_fraction": float(m.float().mean())}


def check_writable(out, fmt: str, overwrite: bool) -> None:
    """Before any work: refuse (FileExistsError) an existing output -- an .h5 file, a NIfTI file
    or its JSON sidecar, a non-empty DICOM folder -- unless ``overwrite``; whatever ``overwrite``
    says, a file where a DICOM folder goes, a folder where a file goes, and a DICOM folder
    holding another series.  Then probe that the folder receiving the output takes new files
    (`medrecon.datasets.publish.probe_writable`)."""
    from medrecon.datasets.publish import OutputExistsError, probe_writable

    p = Path(out)
    if fmt == "dicom":
        if os.path.lexists(p) and not p.is_dir():
            raise FileExistsError(f"{printable(p)} is a file, not a DICOM series folder")
        if p.is_dir() and any(p.iterdir()):
            if not overwrite:
                raise OutputExistsError(f"{printable(p)} exists and is not empty; pass "
                                        "overwrite=True (--overwrite) to replace its series")
            from medrecon.datasets.dicom import _series_files
            _series_files(p)  # another series there is refused even with overwrite
        probe_writable(p if p.is_dir() else _existing(p.parent))
        return
    if p.is_dir():
        raise IsADirectoryError(f"{printable(p)} is a folder; the {fmt} output is a file")
    if not overwrite:
        for q in output_paths(p, fmt):
            if os.path.lexists(q):
                raise OutputExistsError(f"{printable(q)} exists; pass overwrite=True "
                                        "(--overwrite) to replace it")
    probe_writable(_existing(p.parent))


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing ancestor (where creating ``folder`` needs write
    permission)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def output_paths(out, fmt: str) -> list[Path]:
    """The paths writing ``out`` in ``fmt`` creates: the file (and a NIfTI file's JSON sidecar),
    or the DICOM series folder."""
    p = Path(out)
    if fmt == "nifti":
        from medrecon.datasets.nifti import sidecar_path
        return [p, sidecar_path(p)]
    return [p]


def input_paths(src) -> list[Path]:
    """The paths an input consists of: the file or series folder (and a NIfTI file's sidecar,
    read as its metadata)."""
    p = Path(src)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from medrecon.datasets.nifti import sidecar_path
        return [p, sidecar_path(p)]
    return [p]


_INPUT_SUFFIXES = (".nii.gz", ".nii", ".hdf5", ".h5", ".npz", ".npy", ".dcm")
_OUT_EXT = {".h5": "h5", ".nii": "nifti", ".nii.gz": "nifti"}


def output_name(src: Path, fmt: str) -> str:
    """The output name of input ``src`` in ``fmt``: its name without the volume suffix, plus
    ``.h5`` / ``.nii.gz``, or bare (a DICOM series folder)."""
    name = src.name
    stem = next((name[: -len(e)] for e in _INPUT_SUFFIXES if name.lower().endswith(e)), name)
    return {"h5": stem + ".h5", "nifti": stem + ".nii.gz", "dicom": stem}[fmt]


def output_target(out, src: Path, n_inputs: int, fmt: str | None,
                  default: str = "h5") -> tuple[Path | None, str]:
    """(output path, format) of input ``src`` for a command's ``--out``/``--format``: a file whose
    extension sets the format (one input only), the folder itself as the DICOM series of a single
    input, or ``out/<output_name>`` in ``fmt`` (else ``default``).  Contradictions are ValueErrors."""
    if out is None:
        return None, fmt or default
    o = Path(out)
    ext_fmt = None if o.is_dir() else next((f for e, f in _OUT_EXT.items() if o.name.endswith(e)), None)
    if ext_fmt is not None:
        if fmt is not None and fmt != ext_fmt:
            raise ValueError(f"--format {fmt} contradicts the extension of --out {o}")
        if n_inputs > 1:
            raise ValueError(f"--out {o} is a file but {n_inputs} inputs were given: pass a folder")
        return o, ext_fmt
    fmt = fmt or default
    if fmt == "dicom" and n_inputs == 1:
        return o, fmt
    return o / output_name(src, fmt), fmt


def output_format(out, fmt: str | None = None) -> str:
    """``fmt`` if given, else from ``out``: ``.nii``/``.nii.gz`` -> nifti, a string ending in
    ``/`` -> dicom, anything else -> h5 (fastMRI submission file)."""
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, "
                             f"got {fmt!r}")
        return fmt
    name = str(out)
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(("/", "\\")):
        return "dicom"
    return "h5"


def recon_affine(header: ISMRMRDHeader | None, recon_size: tuple[int, int], first: int = 0,
                 num_slices: int = 1) -> np.ndarray:
    """LPS affine (`medrecon.datasets.geometry`) of recon slices ``first, first+1, ...``: pixel
    spacing = recon FOV / recon matrix (x: rows, y: columns), slice spacing = z FOV / z matrix
    (the slice thickness of 2-D scans), axial, volume centred at the origin.  Without a header:
    1 mm voxels.  (fastMRI files hold no patient orientation.)"""
    from medrecon.datasets.geometry import dicom_affine

    if header is None:
        sp = (1.0, 1.0, 1.0)
    else:
        sp = tuple(fov / max(n, 1) for fov, n in zip(header.recon_fov_mm, header.recon_shape))
    R, C = recon_size
    origin = (-(C - 1) / 2 * sp[1], -(R - 1) / 2 * sp[0], (first - (num_slices - 1) / 2) * sp[2])
    return dicom_affine((1, 0, 0, 0, 1, 0), (sp[0], sp[1]), origin, sp[2])


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "options", "nfe", "seconds", "seed", "mask", "file", "slices",
            "input_format", "simulation", "prior", "medrecon_version")
    meta = {"software": "medrecon", **{k: record.get(k) for k in keys}}
    if meta["file"] is not None:  # the input's file name only, never its folders
        meta["file"] = printable(Path(meta["file"]).name)
    return meta


def write_output(out, pred: np.ndarray, record: dict[str, Any], affine: np.ndarray,
                 fmt: str | None = None, overwrite: bool = False, *,
                 reference=None, keep_phi: bool = False) -> Path:
    """Write magnitudes ``pred`` ``[slices, rx, ry]`` with the record's metadata (module doc).

    ``affine``: LPS for ``(k, r, c)``.  ``reference``: the source `DicomSeries` of exactly these
    slices (a DICOM input); a DICOM output then keeps its geometry, and its patient/study
    identifiers (citing the source images) only with ``keep_phi`` (else it is de-identified,
    `medrecon.datasets.dicom.write_dicom_series`).  HDF5 outputs store the
    affine as the ``affine_lps`` attr (JSON).  Metadata name the input by its file name only.
    """
    from medrecon.datasets.geometry import lps_to_ras

    fmt = output_format(out, fmt)
    meta = _metadata(record)
    if not np.isfinite(pred).all():
        raise ValueError("reconstruction contains NaN or Inf")
    if fmt == "nifti":
        from medrecon.datasets.nifti import write_nifti
        return write_nifti(pred, out, lps_to_ras(affine), overwrite=overwrite, sidecar=meta)
    if fmt == "dicom":
        from medrecon.datasets.dicom import write_dicom_series
        params = json.dumps({k: meta[k] for k in ("options", "nfe", "seconds", "seed", "mask", "slices",
                                                   "prior", "medrecon_version")})
        geometry = {"affine": affine} if reference is None else {"reference": reference}
        return write_dicom_series(pred, out, modality="MR", anonymize=not keep_phi,
                                  series_description=f"medrecon {record['method']}",
                                  derivation_description=f"medrecon {record['method']} {params}",
                                  overwrite=overwrite, **geometry)
    with atomic_h5(out, overwrite) as f:  # fastMRI submission format + metadata attrs
        f.create_dataset("reconstruction", data=pred.astype(np.float32))
        for key, val in {**meta, "affine_lps": np.asarray(affine).tolist()}.items():
            if val is not None:
                f.attrs[key] = json.dumps(val) if isinstance(val, (dict, list)) else val
    return Path(out)
