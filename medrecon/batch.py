"""Batch reconstruction of many volumes (MRI or CT): one task per volume, on Ray or in-process.

``run_batch(inputs, out_dir, method, ...)`` runs `medrecon.pipeline.reconstruct_file` once per
input volume and writes ``OUT_DIR/<input name>`` (``.h5``; ``.nii.gz`` or a DICOM series folder
with ``out_format``; CT methods default to a DICOM series).  Inputs are read as ``medrecon
recon`` reads them (`medrecon.inputs.find_inputs`).  It is what ``medrecon batch`` runs.

- **Executors.**  With Ray installed (the ``medrecon[distributed]`` extra) each volume is one Ray
  task asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs (fractions share a GPU; with GPUs the
  task reconstructs on ``cuda``, the device Ray assigned it).  ``address=None``/``"local"`` starts
  a local Ray instance (or joins the one this process already started); any other address
  (``"ray://head:10001"``, ``"auto"``) joins that cluster, whose nodes must have medrecon
  installed and see ``out_dir`` (and any path given in ``options``) on a shared file system.
  A local instance must hold the CPUs/GPUs one task asks for (checked up front: such a task would
  wait forever).  Without Ray the volumes run one after the other in this process, with the same
  outputs, markers and failure records.
- **Resume.**  Outputs are written atomically (a crash never leaves a partial output), then a
  done marker ``OUT_DIR/.medrecon-batch/done/<output name>.json`` (the settings and the
  `reconstruct_file` record) is written atomically too.  The settings are the method, resolved
  options, mask, slices, sampling seed, format, the digest of the prior's weights
  (`medrecon.provenance.prior_digest`) and the medrecon version.  A rerun skips a volume only
  when its output exists and its marker holds exactly these settings, or, with no marker (a crash
  between the two renames), when the output's own metadata records exactly these settings
  (`medrecon.batch_resume`; CT settings have ``mask`` null).  Any
  other output at an output path is redone with ``overwrite`` and a failure without it.
- **Inputs are never outputs.**  ``out_dir`` may not be, or lie inside, an input folder, and no
  output may be an input (`medrecon.datasets.publish.refuse_input_overlap`), whatever
  ``overwrite`` says.
- **Clean exit.**  A local Ray instance started here is shut down on return, on an exception, on
  SIGINT and on SIGTERM; a reaper process (`medrecon.batch_reaper`) stops its processes even when
  the driver is killed with SIGKILL, so no Ray agent outlives the batch.
- **Failures.**  A volume whose reconstruction raises is recorded in
  ``OUT_DIR/batch-failures.jsonl`` (one JSON object per line: file, output, error, traceback,
  attempts; rewritten by each run) and the batch goes on.  A task whose worker process dies
  (killed, out of memory) is retried up to ``max_retries`` times by Ray; ``attempts`` counts the
  tries, so a volume with ``attempts > 1`` was retried after a worker died (`medrecon.batch_ray`).
- **Plugins.**  ``plugins`` (module names or ``.py`` files) are imported in every worker before
  it reconstructs, so methods registered outside medrecon run on the cluster too.

Two batches must not write to the same ``out_dir`` at the same time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from medrecon.batch_ray import ray_module, run_on_ray, sigterm_exits
from medrecon.batch_resume import marker_path, prior_state, write_json
from medrecon.datasets.publish import remove_stale_temps
from medrecon.inputs import find_inputs
from medrecon.outputs import OUTPUT_FORMATS, output_name
from medrecon.pipeline import MaskSpec, reconstruct_file
from medrecon.provenance import medrecon_version, prior_digest

__all__ = ["run_batch", "BatchSummary", "VolumeResult", "load_plugins", "STATE_DIR",
           "FAILURES_FILE"]

STATE_DIR = ".medrecon-batch"
FAILURES_FILE = "batch-failures.jsonl"


@dataclass(frozen=True)
class VolumeResult:
    """What happened to one input: status ``"done"``, ``"skipped"`` or ``"failed"``."""

    file: str
    output: str
    status: str
    attempts: int = 0  # tries in this run (> 1: retried after its worker died)
    seconds: float = 0.0  # wall time of the task, file I/O included
    error: str | None = None
    record: dict[str, Any] | None = None  # `reconstruct_file`'s record (from the marker if skipped)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchSummary:
    """All volumes of one run, in input order, and where they ran."""

    results: list[VolumeResult]
    seconds: float
    executor: str  # "in-process" or "ray <address>"
    out_dir: str
    failures_file: str | None = None  # set when some volume failed

    def _with(self, status: str) -> list[VolumeResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[VolumeResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[VolumeResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[VolumeResult]:
        return self._with("failed")

    @property
    def retried(self) -> list[VolumeResult]:
        return [r for r in self.results if r.attempts > 1]

    def to_dict(self) -> dict[str, Any]:
        return {"done": len(self.done), "skipped": len(self.skipped), "failed": len(self.failed),
                "retried": len(self.retried), "seconds": round(self.seconds, 3),
                "executor": self.executor, "out_dir": self.out_dir,
                "failures_file": self.failures_file,
                "volumes": [r.to_dict() for r in self.results]}


@dataclass(frozen=True)
class _Job:
    """Everything one task needs (pickled to the Ray worker)."""

    src: str
    out: str
    fmt: str
    method: str
    mask: MaskSpec
    slices: str | None
    seed: int | None
    batch_size: int
    device: str | None
    overwrite: bool
    options: dict[str, Any]
    settings: dict[str, Any]
    state: str  # OUT_DIR/.medrecon-batch
    run_id: str
    plugins: tuple[str, ...] = field(default=())
    keep_phi: bool = False
    allow_irregular_spacing: bool = False


def load_plugins(plugins: Sequence[str]) -> None:
    """Import each module name or ``.py`` file once per process (they register methods)."""
    for plugin in plugins:
        if not plugin.endswith(".py"):
            importlib.import_module(plugin)
            continue
        path = Path(plugin).resolve()
        name = f"medrecon_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"plugin {plugin}: no such file")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj))


def _count_attempt(job: _Job) -> int:
    """Append this try to the run's attempt log of the volume; return the number of tries."""
    log = Path(job.state) / "runs" / job.run_id / f"{Path(job.out).name}.attempts"
    with open(log, "a") as f:
        f.write("try\n")
    return len(log.read_text().splitlines())


def _attempts(job: _Job) -> int:
    log = Path(job.state) / "runs" / job.run_id / f"{Path(job.out).name}.attempts"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _run_volume(job: _Job) -> dict[str, Any]:
    """The task: reconstruct one volume, write its output and done marker; never raises for a
    bad input (the error is returned), so only a dead worker makes Ray retry."""
    start = time.perf_counter()
    attempts = _count_attempt(job)
    try:
        load_plugins(job.plugins)
        remove_stale_temps(Path(job.out).parent)  # debris of a writer killed mid-write
        record = reconstruct_file(job.src, job.method, job.mask, job.slices, Path(job.out),
                                  job.overwrite, False, job.device, seed=job.seed,
                                  out_format=job.fmt, batch_size=job.batch_size,
                                  keep_phi=job.keep_phi,
                                  allow_irregular_spacing=job.allow_irregular_spacing,
                                  options=job.options)
        write_json(marker_path(job), {"settings": job.settings, "record": record})
    except Exception as exc:  # a bad volume is recorded and the batch goes on
        return {"status": "failed", "attempts": attempts, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start}
    return {"status": "done", "attempts": attempts, "record": record,
            "seconds": time.perf_counter() - start}


def _refuse_overlap(inputs, files: list[Path], out_dir: Path, jobs: list[_Job]) -> None:
    """Inputs are never written (`medrecon.datasets.publish.refuse_input_overlap`), and the output
    folder may not lie inside an input folder, where the next run would read it as an input."""
    from medrecon.datasets.nifti import sidecar_path
    from medrecon.datasets.publish import InputOverlapError, printable, refuse_input_overlap

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    folders = [Path(p).absolute() for p in items if Path(p).is_dir()]
    outs = [Path(j.out) for j in jobs]
    outs += [sidecar_path(o) for o in outs if o.name.endswith((".nii", ".nii.gz"))]
    refuse_input_overlap(outs, files, folders=folders, out_dirs=[out_dir])
    real_out = Path(os.path.realpath(out_dir))
    for folder in folders:
        if Path(os.path.realpath(folder)) in real_out.parents:
            raise InputOverlapError(
                f"output folder {printable(out_dir)} lies inside the input folder {printable(folder)}, "
                "where a later batch would read it as an input: choose an output folder outside it")


def _plan(files: list[Path], out_dir: Path, fmt: str, make) -> list[_Job]:
    names: dict[str, Path] = {}
    for src in files:
        name = output_name(src, fmt)
        if name in names:
            raise ValueError(f"inputs {names[name]} and {src} would both write {out_dir / name}")
        names[name] = src
    return [make(src, out_dir / name) for name, src in names.items()]


def run_batch(inputs, out_dir, method: str = "cg-sense", mask: MaskSpec | None = None, *,
              options: dict[str, Any] | None = None, slices: str | None = None,
              out_format: str | None = None, overwrite: bool = False, device: str | None = None,
              seed: int | None = None, batch_size: int = 1, address: str | None = None,
              num_cpus: float = 1, num_gpus: float = 0, local_cpus: int | None = None,
              max_retries: int = 3, plugins: Sequence[str] = (), keep_phi: bool = False,
              allow_irregular_spacing: bool = False,
              on_result: Callable[[VolumeResult], None] | None = None) -> BatchSummary:
    """Reconstruct every input volume into ``out_dir`` (module doc); ``on_result`` is called
    with each volume's result as it arrives (skipped ones first).  ``options``: the method's
    options, resolved (its dataclass, as the CLI passes it) or a dict.  ``keep_phi`` and
    ``allow_irregular_spacing``: as `medrecon.pipeline.reconstruct_file`."""
    from medrecon.pipeline import resolved_options
    from medrecon.registry import get_method, options_to_dict

    start = time.perf_counter()
    # absolute paths: a worker's working directory is not the driver's
    plugins = tuple(str(Path(p).absolute()) if str(p).endswith(".py") else str(p)
                    for p in plugins)
    load_plugins(plugins)
    spec = get_method(method)  # fail early on an unknown method or option
    # typed values (picklable for Ray workers; no string is parsed again downstream)
    resolved = options_to_dict(resolved_options(spec, options))
    ct = spec.modality == "ct"
    mask = mask or MaskSpec()
    if not mask.acceleration >= 1:
        raise ValueError(f"acceleration must be >= 1, got {mask.acceleration}")
    if not 0 < mask.center_fraction < 1:
        raise ValueError(f"center_fraction must be in (0, 1), got {mask.center_fraction}")
    if batch_size < 1 or num_cpus < 0 or num_gpus < 0 or max_retries < 0:
        raise ValueError(f"need batch_size >= 1 and num_cpus, num_gpus, max_retries >= 0, got "
                         f"{batch_size}, {num_cpus}, {num_gpus}, {max_retries}")
    fmt = out_format or ("dicom" if ct else "h5")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    ray = ray_module()
    local = address in (None, "local")
    if ray is None and not local:
        raise ValueError(f"address {address!r} needs Ray: pip install 'medrecon[distributed]'")
    if ray is not None and str(device or "").startswith("cuda") and not num_gpus:
        raise ValueError("device cuda under Ray needs num_gpus > 0 (Ray hides GPUs from tasks "
                         "that did not ask for one)")
    if num_gpus and device is None:
        device = "cuda"  # under Ray: the GPU(s) assigned to the task (CUDA_VISIBLE_DEVICES)

    out_dir = Path(out_dir).absolute()
    files = [p.absolute() for p in find_inputs(inputs)]
    state = out_dir / STATE_DIR
    run_id = uuid.uuid4().hex[:12]
    settings = _json_roundtrip({"method": method, "options": resolved,
                                "mask": None if ct else dataclasses.asdict(mask), "slices": slices,
                                "seed": seed, "format": fmt, "prior": prior_digest(resolved),
                                "version": medrecon_version()})
    # non-default flags join the settings (outputs made without them are not adopted)
    settings.update({k: True for k, v in (("keep_phi", keep_phi),
                                          ("allow_irregular_spacing", allow_irregular_spacing)) if v})

    def make(src: Path, out: Path) -> _Job:
        return _Job(str(src), str(out), fmt, method, mask, slices, seed, batch_size, device,
                    overwrite, resolved, settings, str(state), run_id, plugins, keep_phi,
                    allow_irregular_spacing)

    jobs = _plan(files, out_dir, fmt, make)
    _refuse_overlap(inputs, files, out_dir, jobs)  # before anything is created in out_dir
    shutil.rmtree(state / "runs", ignore_errors=True)  # attempt logs of crashed runs
    for sub in ("done", f"runs/{run_id}"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    failures = out_dir / FAILURES_FILE
    failures.unlink(missing_ok=True)
    results: dict[str, VolumeResult] = {}

    def finish(job: _Job, res: VolumeResult, tb: str | None = None) -> None:
        results[job.out] = res
        if res.status == "failed":
            with open(failures, "a") as f:
                f.write(json.dumps({"file": res.file, "output": res.output, "error": res.error,
                                    "attempts": res.attempts, "traceback": tb}) + "\n")
        if on_result is not None:
            on_result(res)

    todo = []
    for job in jobs:
        prior = prior_state(job)
        if prior is None:
            todo.append(job)
        else:
            status, record, error = prior
            finish(job, VolumeResult(job.src, job.out, status, error=error, record=record))

    def from_task(job: _Job, out: dict[str, Any]) -> None:
        finish(job, VolumeResult(job.src, job.out, out["status"], out["attempts"],
                                 round(out["seconds"], 4), out.get("error"), out.get("record")),
               out.get("traceback"))

    with sigterm_exits():
        if not todo:
            executor = "none (nothing to run)"
        elif ray is None:
            executor = "in-process"
            for job in todo:
                from_task(job, _run_volume(job))
        else:
            executor = run_on_ray(ray, _run_volume, todo, from_task, _attempts, address=address,
                                  local_cpus=local_cpus, num_cpus=num_cpus, num_gpus=num_gpus,
                                  max_retries=max_retries)
    shutil.rmtree(state / "runs" / run_id, ignore_errors=True)
    ordered = [results[job.out] for job in jobs]
    return BatchSummary(ordered, time.perf_counter() - start, executor, str(out_dir),
                        str(failures) if failures.exists() else None)
