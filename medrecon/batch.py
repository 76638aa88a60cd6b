"""Batch reconstruction of many fastMRI volumes: one task per volume, on Ray or in-process.

``run_batch(inputs, out_dir, method, ...)`` runs `medrecon.pipeline.reconstruct_file` once per
input volume and writes ``OUT_DIR/<input name>`` (``.h5``; ``.nii.gz`` or a DICOM series folder
with ``out_format``).  It is what ``medrecon batch`` runs.

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
  between the two renames), when the output's own metadata records exactly these settings.  Any
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
  tries, so a volume with ``attempts > 1`` was retried after a worker died.
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
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medrecon.pipeline import OUTPUT_FORMATS, MaskSpec, output_name, reconstruct_file
from medrecon.batch_reaper import start_reaper
from medrecon.datasets.publish import remove_stale_temps
from medrecon.provenance import medrecon_version, prior_digest

__all__ = ["run_batch", "BatchSummary", "VolumeResult", "find_inputs", "output_name",
           "load_plugins", "STATE_DIR", "FAILURES_FILE"]

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


_VOLUME_SUFFIXES = (".h5", ".nii.gz", ".nii")


def find_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder -> every fastMRI ``*.h5`` / NIfTI ``*.nii(.gz)`` inside and every
    sub-folder (one DICOM series each), sorted; a folder holding none of them is an error."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if not q.name.startswith(".") and (
                q.is_dir() or (q.is_file() and q.name.lower().endswith(_VOLUME_SUFFIXES))))
            if not found:
                raise ValueError(f"{p}: folder contains no .h5/.nii/.nii.gz files or DICOM series folders")
            files += found
        else:
            files.append(p)
    if not files:
        raise ValueError("no inputs given")
    return files


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


def _ray():
    """The ray module, or None when the ``distributed`` extra is not installed."""
    try:
        import ray
    except ImportError:
        return None
    return ray


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj))


def _write_json(path: Path, obj) -> None:
    from medrecon.datasets.nifti import _atomic_write  # the repo's temp-file-and-rename writer

    text = json.dumps(obj, indent=1)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _marker(job: _Job) -> Path:
    return Path(job.state) / "done" / f"{Path(job.out).name}.json"


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
                                  **job.options)
        _write_json(_marker(job), {"settings": job.settings, "record": record})
    except Exception as exc:  # a bad volume is recorded and the batch goes on
        return {"status": "failed", "attempts": attempts, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start}
    return {"status": "done", "attempts": attempts, "record": record,
            "seconds": time.perf_counter() - start}


def _output_settings(out: Path, fmt: str) -> dict[str, Any] | None:
    """The settings recorded in a complete output's own metadata (h5 attrs, NIfTI sidecar, the
    DICOM DerivationDescription), in the form of `run_batch`'s settings; None if unreadable."""
    try:
        if fmt == "h5":
            import h5py
            with h5py.File(out, "r") as f:
                if "reconstruction" not in f:
                    return None
                meta = {k: (json.loads(v) if k in _JSON_ATTRS and isinstance(v, str) else v)
                        for k, v in f.attrs.items()}
        elif fmt == "nifti":
            from medrecon.datasets.nifti import sidecar_path
            meta = json.loads(sidecar_path(out).read_text())
        else:
            import pydicom
            first = min(out.glob("*.dcm"))
            desc = str(pydicom.dcmread(first, stop_before_pixels=True).DerivationDescription)
            method, _, params = desc.removeprefix("medrecon ").partition(" ")
            meta = {"method": method, **json.loads(params)}
        mask = meta["mask"]
        if isinstance(mask, dict):  # the record adds the measured fraction to the MaskSpec
            mask = {k: v for k, v in mask.items() if k != "sampled_fraction"}
        return _json_roundtrip({
            "method": meta["method"], "options": meta["options"], "mask": mask,
            "slices": meta["slices"], "seed": meta.get("seed"), "format": fmt,
            "prior": meta.get("prior"), "version": meta.get("medrecon_version")})
    except Exception:  # noqa: BLE001 -- any unreadable output is "not ours"
        return None


_JSON_ATTRS = ("options", "mask", "slices", "simulation")


def _prior_state(job: _Job) -> VolumeResult | None:
    """Skip (done before), refuse (something else is there) or None (run it)."""
    if job.overwrite:
        return None
    out, marker = Path(job.out), _marker(job)
    if marker.is_file() and out.exists():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if saved.get("settings") == job.settings:
            return VolumeResult(job.src, job.out, "skipped", record=saved.get("record"))
        return VolumeResult(job.src, job.out, "failed", error=(
            f"{out} was made with other settings ({_differences(saved.get('settings'), job.settings)}); "
            f"pass overwrite to redo it"))
    if out.exists():
        own = _output_settings(out, job.fmt)
        want = job.settings
        if own is not None:  # outputs record slices as [start, stop]; a file's own mask as "file"
            want = {**want, "slices": _slice_range(job)}
            if own["mask"] == "file":
                want["mask"] = "file"
        if own == want:  # crashed between output and marker: its metadata says it all
            _write_json(marker, {"settings": job.settings, "record": None})
            return VolumeResult(job.src, job.out, "skipped")
        why = ("its metadata records other settings: " + _differences(own, want)
               if own is not None else "it is not a complete medrecon output")
        return VolumeResult(job.src, job.out, "failed", error=(
            f"{out} exists and has no done marker of this batch; {why}; pass overwrite to replace it"))
    return None


def _slice_range(job: _Job) -> list[int] | None:
    """``[start, stop]`` of the job's slices in its input, as outputs record them."""
    from medrecon.image_inputs import input_kind, read_image_volume
    from medrecon.pipeline import parse_slices

    try:
        if input_kind(job.src) == "fastmri":
            from medrecon.datasets.fastmri import FastMRIFile
            with FastMRIFile(job.src) as f:
                n = f.num_slices
        else:
            n = read_image_volume(job.src).volume.shape[0]
        r = parse_slices(job.slices, n)
    except (ValueError, OSError, KeyError):
        return None
    return [r.start, r.stop]


def _differences(saved: dict[str, Any] | None, want: dict[str, Any]) -> str:
    """The settings that differ, e.g. ``mask: {...} here, {...} there``."""
    if not isinstance(saved, dict):
        return "no readable settings"
    keys = [k for k in want if saved.get(k) != want[k]]
    return "; ".join(f"{k}: {json.dumps(want[k])} now, {json.dumps(saved.get(k))} before"
                     for k in keys) or "same settings"


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


def _on_ray(ray, jobs: list[_Job], report: Callable[[_Job, dict[str, Any]], None], *,
            address: str | None, local_cpus: int | None, num_cpus: float, num_gpus: float,
            max_retries: int) -> str:
    """One Ray task per job, results reported as they arrive; returns the executor's name."""
    local = address in (None, "local")
    started = not ray.is_initialized()
    reaper = None
    if started:
        kw = {"num_cpus": local_cpus} if local else {"address": address}
        before = _children()
        if local:
            reaper = start_reaper()  # before ray.init: a SIGKILL during init is covered too
        try:
            ray.init(include_dashboard=False, **kw)
        except BaseException:
            if reaper is not None:
                reaper.watch(_children() - before - {reaper.pid})
                reaper.close()
            raise
        if reaper is not None:
            reaper.watch(_children() - before - {reaper.pid})
    try:
        # ray.init installs a SIGTERM handler that aborts the driver (exit 134, no clean-up)
        with _sigterm_exits():
            _collect(ray, jobs, report, local=local, num_cpus=num_cpus, num_gpus=num_gpus,
                     max_retries=max_retries)
    finally:
        if started:
            try:
                ray.shutdown()
            finally:
                if reaper is not None:
                    reaper.close()
    return f"ray {'local' if local else address}"


def _collect(ray, jobs: list[_Job], report, *, local: bool, num_cpus: float, num_gpus: float,
             max_retries: int) -> None:
    """Submit one task per job and report each result as it arrives."""
    have = ray.cluster_resources()
    for key, need in (("CPU", num_cpus), ("GPU", num_gpus)):
        if local and need > have.get(key, 0):  # the task could never be scheduled
            raise ValueError(f"a task asks for {need:g} {key}s but the local Ray instance "
                             f"has {have.get(key, 0):g}")
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                      retry_exceptions=False)(_run_volume)
    refs = [task.remote(job) for job in jobs]
    job_of = dict(zip(refs, jobs))
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        job = job_of.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # the worker died max_retries + 1 times
            first = (str(exc).strip().splitlines() or [""])[0]
            out = {"status": "failed", "attempts": _attempts(job), "seconds": 0.0,
                   "error": f"{type(exc).__name__}: {first}"}
        report(job, out)


def _children() -> set[int]:
    """PIDs of this process's descendants (empty without psutil)."""
    try:
        import psutil
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:  # noqa: BLE001 -- no psutil, or a race with an exiting child
        return set()


class _sigterm_exits:
    """Within the block (main thread only), SIGTERM raises SystemExit, so ``finally`` clauses run:
    the Ray instance is shut down and partial outputs are never published.  The block exits with
    status 143 (128 + SIGTERM) even where Ray re-raises the exit as ``SystemExit(1)``."""

    def __enter__(self):
        self._old, self._got = None, None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        self._got = signum
        raise SystemExit(128 + signum)

    def __exit__(self, exc_type, exc, tb):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        if self._got is not None and exc_type is SystemExit:
            raise SystemExit(128 + self._got) from None
        return False


def run_batch(inputs, out_dir, method: str = "cg-sense", mask: MaskSpec | None = None, *,
              options: dict[str, Any] | None = None, slices: str | None = None,
              out_format: str | None = None, overwrite: bool = False, device: str | None = None,
              seed: int | None = None, batch_size: int = 1, address: str | None = None,
              num_cpus: float = 1, num_gpus: float = 0, local_cpus: int | None = None,
              max_retries: int = 3, plugins: Sequence[str] = (), keep_phi: bool = False,
              allow_irregular_spacing: bool = False,
              on_result: Callable[[VolumeResult], None] | None = None) -> BatchSummary:
    """Reconstruct every input volume into ``out_dir`` (module doc); ``on_result`` is called
    with each volume's result as it arrives (skipped ones first).  ``keep_phi`` and
    ``allow_irregular_spacing``: as `medrecon.pipeline.reconstruct_file`."""
    from medrecon.registry import get_method, options_to_dict, resolve_options

    start = time.perf_counter()
    # absolute paths: a worker's working directory is not the driver's
    plugins = tuple(str(Path(p).absolute()) if str(p).endswith(".py") else str(p)
                    for p in plugins)
    load_plugins(plugins)
    spec = get_method(method)  # fail early on an unknown method or option
    options = dict(options or {})
    resolved = options_to_dict(resolve_options(spec, options))
    mask = mask or MaskSpec()
    if not mask.acceleration >= 1:
        raise ValueError(f"acceleration must be >= 1, got {mask.acceleration}")
    if not 0 < mask.center_fraction < 1:
        raise ValueError(f"center_fraction must be in (0, 1), got {mask.center_fraction}")
    if batch_size < 1 or num_cpus < 0 or num_gpus < 0 or max_retries < 0:
        raise ValueError(f"need batch_size >= 1 and num_cpus, num_gpus, max_retries >= 0, got "
                         f"{batch_size}, {num_cpus}, {num_gpus}, {max_retries}")
    fmt = out_format or "h5"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    ray = _ray()
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
                                "mask": dataclasses.asdict(mask), "slices": slices,
                                "seed": seed, "format": fmt, "prior": prior_digest(resolved),
                                "version": medrecon_version()})
    # non-default flags join the settings (outputs made without them are not adopted)
    settings.update({k: True for k, v in (("keep_phi", keep_phi),
                                          ("allow_irregular_spacing", allow_irregular_spacing)) if v})

    def make(src: Path, out: Path) -> _Job:
        return _Job(str(src), str(out), fmt, method, mask, slices, seed, batch_size, device,
                    overwrite, options, settings, str(state), run_id, plugins, keep_phi,
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
        prior = _prior_state(job)
        if prior is None:
            todo.append(job)
        else:
            finish(job, prior)

    def from_task(job: _Job, out: dict[str, Any]) -> None:
        finish(job, VolumeResult(job.src, job.out, out["status"], out["attempts"],
                                 round(out["seconds"], 4), out.get("error"), out.get("record")),
               out.get("traceback"))

    with _sigterm_exits():
        if not todo:
            executor = "none (nothing to run)"
        elif ray is None:
            executor = "in-process"
            for job in todo:
                from_task(job, _run_volume(job))
        else:
            executor = _on_ray(ray, todo, from_task, address=address, local_cpus=local_cpus,
                               num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    shutil.rmtree(state / "runs" / run_id, ignore_errors=True)
    ordered = [results[job.out] for job in jobs]
    return BatchSummary(ordered, time.perf_counter() - start, executor, str(out_dir),
                        str(failures) if failures.exists() else None)
