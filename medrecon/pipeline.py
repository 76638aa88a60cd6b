"""``reconstruct_file``: a whole volume through one method (MRI or CT), slice by slice.

Inputs: for MRI methods a fastMRI HDF5 file (k-space), or a DICOM MR series / NIfTI volume
(images: k-space simulated retrospectively, `medrecon.image_inputs`); for CT methods
(``modality="ct"``, `medrecon.methods.ct`) a DICOM CT series or a sinogram file
(`medrecon.ct.inputs`).  This is what ``medrecon recon`` runs for each input; notebooks and
pipelines call it directly and get the same record the CLI prints with ``--json``:

``{"file", "method", "options", "nfe", "samples", "seconds", "seconds_per_slice", "slices", "shape",
"recon_size", "mask", "metrics", "input_format", "simulation", "seed", "output", "prior",
"medrecon_version"}`` where ``mask`` is ``"file"`` (the file's own mask: test/challenge data),
``{"kind", "acceleration", "center_fraction", "seed", "sampled_fraction"}`` (retrospective
undersampling) or ``null`` (CT); ``nfe`` is network evaluations per slice (CT: per call;
``samples`` > 1 averaged posterior samples: all of them; CT records have no ``samples``),
``seconds`` the reconstruction time of the volume (sensitivity estimation included, file I/O
excluded), and ``metrics`` = ``{"nmse", "psnr", "ssim"}`` (fastMRI conventions) against the
fully sampled RSS image at the recon matrix for a fully sampled fastMRI file, against the input
magnitudes for an image input, else ``null``; CT: ``{"rmse_hu", "psnr", "ssim"}``
(`medrecon.ct.evaluate.ct_metrics`) against the scan's reference when it has one.
``input_format`` is ``"fastmri"``, ``"ismrmrd"``, ``"twix"``, ``"dicom"``, ``"nifti"`` or (CT)
``"sinogram"``; ``simulation`` is ``null`` for k-space inputs, else ``{"kind", "coils", "phase",
"phase_encoding", "reference"}`` (CT: the dose simulation); ``seed`` is the sampling seed of
diffusion methods (``null``: the default, `medrecon.registry.DEFAULT_SEED`).  CT records add
``"units": "HU"`` and ``"geometry"``.  ``prior`` digests the weights behind the ``checkpoint``
option (`medrecon.provenance.prior_digest`).

``out`` is written by `medrecon.outputs.write_output` in the format of its extension.
Geometry: a NIfTI input's own affine, a DICOM input's own grid (a DICOM output then also keeps
its study context, de-identified unless ``keep_phi``), for fastMRI the ISMRMRD recon FOV/matrix
(`medrecon.outputs.recon_affine`), for a sinogram an axial grid at its pixel size; with
``slices`` the grid starts at the first selected slice.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medrecon.datasets.fastmri import center_crop
from medrecon.datasets.publish import printable
from medrecon.inputs import open_kspace, parse_slices
from medrecon.metrics import evaluate
from medrecon.outputs import (check_writable, input_paths, output_format, output_paths,
                              recon_affine, write_output)
from medrecon.physics.coils import rss
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import make_mask
from medrecon.provenance import medrecon_version, prior_digest
from medrecon.reconstruct import check_samples, reconstruct
from medrecon.registry import (DEFAULT_SEED, get_method, list_methods, options_to_dict,
                               resolve_options)

__all__ = ["MaskSpec", "reconstruct_file", "resolved_options"]


@dataclass(frozen=True)
class MaskSpec:
    """Retrospective undersampling: a `medrecon.physics.masks.make_mask` call."""

    kind: str = "equispaced_fraction"
    acceleration: float = 4
    center_fraction: float = 0.08
    seed: int | None = 0


def reconstruct_file(path, method: str = "cg-sense", mask: MaskSpec | None = None,
                     slices: str | None = None, out=None, overwrite: bool = False,
                     progress: bool = False, device: str | None = None,
                     seed: int | None = None, out_format: str | None = None,
                     batch_size: int = 1, coils: int = 1, keep_phi: bool = False,
                     allow_irregular_spacing: bool = False, options=None, priors=None,
                     timings: dict[str, float] | None = None, samples: int = 1,
                     **kwargs) -> dict[str, Any]:
    """Reconstruct the selected slices of a fastMRI file, DICOM MR series or NIfTI volume
    (`medrecon.inputs.input_kind`) with an MRI method, or of a CT scan (DICOM CT series or
    sinogram file, `medrecon.ct.inputs`) with a CT method; write ``out`` if given.

    ``options``: the method's options, resolved (its dataclass, as the CLI passes it) or a dict;
    further keyword arguments are options too.  ``seed`` seeds the sampler of each call
    (diffusion methods); ``batch_size`` slices are reconstructed per call (stochastic methods
    then draw different noise than one by one; CT: 1, the default, denoises all selected slices
    in one call); ``out_format`` overrides the format inferred from ``out`` (one of
    `OUTPUT_FORMATS`); ``coils`` is the number of simulated coils for MRI image inputs
    (`medrecon.image_inputs`).  ``progress`` shows a bar over the slices and, for MRI diffusion
    methods, one over the sampler steps (`medrecon.reconstruct`'s ``callback``).  Before any work: an ``out`` that is (or lies
    inside, or holds) the input is refused whatever ``overwrite`` says
    (`medrecon.datasets.publish.refuse_input_overlap`), an existing ``out`` unless ``overwrite``,
    and an output folder that cannot be written.  ``keep_phi`` keeps a DICOM input's
    patient/study identifiers in a DICOM output (default: de-identified);
    ``allow_irregular_spacing`` reads MRI image inputs whose slices are unevenly spaced
    (`medrecon.image_inputs.read_image_volume`).  ``priors``: the
    `medrecon.methods.priors.PriorCache` networks are loaded into and taken from (None: the
    shared default; a `medrecon.Reconstructor` passes its own).  ``samples``: MRI diffusion
    methods average that many posterior samples per slice (`medrecon.reconstruct`; the record's
    ``nfe`` counts all of them).  ``timings``: a dict filled
    with the seconds of each stage (``read``, ``maps``, ``reconstruct``, ``write``;
    `medrecon.bench.pipeline` reports them).

    Slices stream: one batch of ``batch_size`` slices is read, reconstructed, reduced to its
    recon-size magnitude and dropped before the next is read; only the magnitudes of the
    volume are kept for the output.
    """
    from medrecon.ct.inputs import is_ct_input
    from medrecon.inputs import input_kind

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = get_method(method)
    opts = resolved_options(spec, options, kwargs)  # fail before any reading
    samples = check_samples(samples, spec)
    if spec.modality != "ct" and is_ct_input(path):
        ct = ", ".join(s.name for s in list_methods() if s.modality == "ct")
        raise ValueError(f"{printable(path)} is a CT scan; method {method!r} is for MRI: use a "
                         f"CT method ({ct})")
    mask = mask or MaskSpec()
    fmt = output_format(out, out_format) if out is not None else None
    if out is not None:
        from medrecon.datasets.publish import refuse_input_overlap

        refuse_input_overlap(output_paths(out, fmt), input_paths(path))
        check_writable(out, fmt, overwrite)
        if not Path(out).parent.is_dir():
            raise FileNotFoundError(f"{printable(Path(out).parent)}: output folder does not "
                                    "exist")
    if spec.modality == "ct":
        pred, record, affine, reference = _ct_volume(path, spec, opts, slices, seed, device,
                                                     batch_size, priors)
    else:
        run = _Runner(printable(Path(path).name), spec, opts, seed, device, progress,
                      batch_size, priors, samples)
        if input_kind(path) in ("fastmri", "ismrmrd", "twix"):  # k-space (medrecon.inputs)
            pred, record, affine, reference = _fastmri_volume(path, mask, slices, batch_size, run)
        else:
            pred, record, affine, reference = _image_volume(path, mask, slices, batch_size,
                                                            coils, run, allow_irregular_spacing)
    t_write = time.perf_counter()
    if out is not None:
        record["output"] = str(write_output(out, pred, record, affine, fmt, overwrite,
                                            reference=reference, keep_phi=keep_phi))
    if timings is not None:
        timings.update(_stages(record, None if spec.modality == "ct" else run),
                       write=time.perf_counter() - t_write)
    return record


def _stages(record, run) -> dict[str, float]:
    """Seconds of read / maps / reconstruct so far (CT: one reconstruct stage)."""
    if run is None:
        return {"read": 0.0, "maps": 0.0, "reconstruct": float(record["seconds"])}
    return dict(run.stages)


def resolved_options(spec, options=None, kwargs: dict[str, Any] | None = None):
    """``options`` as ``spec``'s options dataclass: an instance passes through untouched (the
    CLI resolves once, at the edge); a dict (plus ``kwargs``) is resolved here."""
    if isinstance(options, spec.options) and not kwargs:
        return options
    if dataclasses.is_dataclass(options):
        options = options_to_dict(options)
    return resolve_options(spec, {**(options or {}), **(kwargs or {})})


def _ct_volume(path, spec, opts, slices, seed, device, batch_size: int, priors=None):
    """A CT scan through a CT method: the HU volume and its record (`medrecon.ct.recon`)."""
    from medrecon.ct.inputs import read_ct_input
    from medrecon.ct.recon import reconstruct_ct

    scan = read_ct_input(path, dataclasses.asdict(opts), slices)
    hu, info = reconstruct_ct(scan, spec, opts, seed=DEFAULT_SEED if seed is None else seed,
                              device=device, batch_size=batch_size, priors=priors)
    used = options_to_dict(opts)
    rows = scan.info.get("slices") or [0, hu.shape[0]]
    record = {"file": str(path), "method": spec.name, "options": used, "nfe": info["nfe"],
              "seconds": round(info["seconds"], 4),
              "seconds_per_slice": round(info["seconds"] / hu.shape[0], 4),
              "slices": rows, "shape": list(hu.shape), "recon_size": list(hu.shape[-2:]),
              "mask": None, "metrics": info["metrics"], "input_format": scan.kind,
              "simulation": scan.simulation, "seed": seed, "output": None,
              "prior": prior_digest(used), "medrecon_version": medrecon_version(),
              "units": "HU", "geometry": scan.info}
    return hu, record, scan.affine, scan.series


class _Runner:
    """One method over the batches of a volume: timing, NFE, and the progress bars."""

    def __init__(self, name, spec, opts, seed, device, progress, batch_size, priors=None,
                 samples: int = 1):
        self.method, self.seed, self.device, self.opts = spec.name, seed, device, opts
        self.samples = samples
        self.priors, self.callback = priors, None
        self.progress, self.name, self.batch_size = progress, name, batch_size
        self.diffusion = spec.kind == "diffusion"
        self.seconds, self.nfe, self.blank = 0.0, 0, 0
        self.used = options_to_dict(opts)
        self.stages = {"read": 0.0, "maps": 0.0, "reconstruct": 0.0}  # seconds

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
                          callback=self.callback, priors=self.priors, options=self.opts,
                          samples=self.samples)
        self.seconds += res.seconds
        self.stages["maps"] += res.maps_seconds
        self.stages["reconstruct"] += res.seconds - res.maps_seconds
        res.smaps = None  # not kept: the next batch estimates its own
        self.nfe, self.used = res.nfe, res.options
        return k, res

    def __call__(self, batches, n_slices: int):
        """Yield ``(batch, kspace, result)`` for each ``(batch, kspace, mask, smaps)``."""
        runs = -(-n_slices // self.batch_size)
        bar = tqdm(total=n_slices, desc=f"{self.name} [{self.method}]", unit="slice",
                   disable=not self.progress, leave=False)
        steps = None
        if self.progress and self.diffusion:  # sampler steps (reconstruct's callback), all runs
            est = self.used.get("steps")
            est = est if isinstance(est, int) and est > 0 else None
            steps = tqdm(total=est * runs if est else None, desc="  sampling", unit="step",
                         leave=False)
            self.callback = lambda i, x: steps.update(1)
        batches = iter(batches)
        try:
            for i in itertools.count():
                t0 = time.perf_counter()  # reading (and simulating) a batch: the read stage
                item = next(batches, None)
                self.stages["read"] += time.perf_counter() - t0
                if item is None:
                    break
                batch, k, m, smaps = item
                before = steps.n if steps is not None else 0
                k, res = self._reconstruct(k, m, smaps)
                if steps is not None and i == 0 and steps.n > before:  # the exact count
                        steps.total = (steps.n - before) * runs
                        steps.refresh()
                yield batch, k, res
                item = k = res = smaps = None  # one batch in memory: dropped before the next read
                bar.update(len(batch))
            if self.blank == n_slices:
                raise ValueError(f"k-space is all zero in every selected slice ({n_slices}); "
                                 "an all-zero measurement has no image to reconstruct")
        finally:
            bar.close()
            self.callback = None
            if steps is not None:
                steps.close()

    def record(self, path, rows: range, **fields) -> dict[str, Any]:
        return {"file": str(path), "method": self.method, "options": self.used, "nfe": self.nfe,
                "samples": self.samples,
                "seconds": round(self.seconds, 4),
                "seconds_per_slice": round(self.seconds / len(rows), 4),
                "slices": [rows.start, rows.stop], **fields, "seed": self.seed, "output": None,
                "prior": prior_digest(self.used), "medrecon_version": medrecon_version()}


def _chunks(rows: range, batch_size: int):
    return [rows[j:j + batch_size] for j in range(0, len(rows), batch_size)]


def _fastmri_volume(path, mask: MaskSpec, slices, batch_size: int, run: _Runner):
    """fastMRI k-space: the file's own mask, or retrospective undersampling scored against RSS."""
    with open_kspace(path) as f:  # fastMRI, ISMRMRD or twix: one reading interface
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
                del k  # not held while the next batch is read

        preds, refs = [], []  # recon-size magnitudes only (copies, not views of full images)
        for _, k, res in run(batches(), len(rows)):
            preds.extend(center_crop(res.magnitude, crop).cpu().numpy().reshape(-1, *crop).copy())
            if own is None:  # fully sampled input: the reference is its RSS image
                refs.extend(center_crop(rss(ifft2c(k)), crop).cpu().numpy().reshape(-1, *crop).copy())
            del k, res  # the batch's k-space and image go before the next batch is read
        pred = np.stack(preds).astype(np.float32)
        metrics = evaluate(np.stack(refs), pred) if refs else None
        record = run.record(path, rows, shape=list(f.shape), recon_size=list(crop),
                            mask=mask_info, metrics=metrics, input_format=f.input_format,
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
            del k, smaps  # not held while the next batch is simulated

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
