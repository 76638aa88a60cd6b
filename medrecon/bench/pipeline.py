"""Every stage of ``medrecon recon`` timed against SigPy, with peak memory (`medrecon bench pipeline`).

One simulated fastMRI-size volume (`medrecon.datasets.simulate_mri`: 16 coils, 640 x 320 k-space
with 2x readout oversampling, 320 x 320 recon matrix, one slice by default) is written as a
fastMRI .h5 to a temp folder and reconstructed by `medrecon.pipeline.reconstruct_file` -- what
``medrecon recon`` runs -- once per method (best of ``repeats`` by total, after a warm-up of the
method on a tiny problem: imports, network loading).  The pipeline reports the seconds of each
stage: read (lazy slice reader and batching), maps (ESPIRiT, `estimate_smaps`, for methods that
need maps), reconstruct (the method) and write (the output .h5).

SigPy runs in the same process on the same slice and mask: ``mri.app.EspiritCalib`` (its
defaults; calibration width min(24, ACS), kernel width min(6, ACS)) then ``mri.app.SenseRecon``
(for cg-sense: its ``lam`` and ``max_iter``) or ``mri.app.L1WaveletRecon`` (for l1-wavelet: its
``lamda``, ``wave_name`` and ``max_iter``, k-space scaled as ours).  Ratios are SigPy seconds /
ours (> 1: medrecon is faster) for the maps, the reconstruction, and both together -- the
reconstruction as a user calls it.  PSNR against the fully sampled RSS image, for both, shows
they solve the same problem.  SigPy always runs on the CPU (NumPy).

Peak memory: each method again as ``python -m medrecon.cli recon`` in a child process (same
file, slices, mask, batch size, device and options); its peak RSS is the child's own
``ru_maxrss`` (`os.wait4`), next to that of a child that only imports `medrecon.pipeline`.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medrecon.bench.tables import render_table
from medrecon.bench.timing import best_of

__all__ = ["Setup", "QUICK", "DEFAULT_METHODS", "plan", "write_input", "peak_rss_mb", "run",
           "format_table"]

CLASSICAL = ("zero-filled", "cg-sense", "l1-wavelet", "spirit-cg")
DEFAULT_METHODS = CLASSICAL + ("ddnm", "dds")
DEFAULT_STEPS = (20, 50)
STAGES = ("read", "maps", "reconstruct", "write")


@dataclass(frozen=True)
class Setup:
    """The simulated input: ``coils`` x ``2 size`` x ``size`` k-space, ``size``^2 recon matrix,
    undersampled as ``medrecon recon`` does (equispaced, ``acceleration``, ``center_fraction``)."""

    coils: int = 16
    size: int = 320
    slices: int = 1
    acceleration: float = 4.0
    center_fraction: float = 0.08
    seed: int = 1000


QUICK = Setup(coils=4, size=48, slices=2, acceleration=2, center_fraction=0.4)  # SigPy agrees


def plan(methods, steps) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, method, options)`` rows: each method once, diffusion methods once per step count
    (label ``ddnm-20``).  Unknown methods and CT methods are a ValueError."""
    from medrecon.registry import get_method

    rows = []
    for name in methods:
        spec = get_method(name)  # ValueError naming the known methods
        if spec.modality != "mri":
            raise ValueError(f"--methods: {name!r} is a {spec.modality.upper()} method; this bench "
                             "runs MRI reconstructions")
        if spec.kind == "diffusion":
            rows += [(f"{name}-{n}", name, {"steps": int(n)}) for n in steps]
        else:
            rows.append((name, name, {}))
    return rows


def write_input(folder, setup: Setup) -> Path:
    """The simulated volume as a fastMRI .h5 in ``folder`` (fully sampled, with its RSS target)."""
    from medrecon.datasets.fastmri import write_fastmri
    from medrecon.datasets.simulate_mri import simulate_mri_volume

    v = simulate_mri_volume(setup.slices, setup.coils, (setup.size, setup.size), seed=setup.seed)
    return write_fastmri(Path(folder) / "bench_pipeline_input.h5", v["kspace"], header=v["header"],
                         reconstruction_rss=v["target"], attrs=v["attrs"])


def _mask_spec(setup: Setup):
    from medrecon.pipeline import MaskSpec

    return MaskSpec(acceleration=setup.acceleration, center_fraction=setup.center_fraction)


def _warm_up(method: str, options: dict[str, Any], device) -> None:
    """One call on a tiny fully sampled problem: imports, JIT and network loading are not timed."""
    from medrecon.reconstruct import reconstruct

    g = torch.Generator().manual_seed(0)
    k = torch.randn(4, 32, 32, dtype=torch.complex64, generator=g).to(device)
    small = {**options, "steps": 1} if "steps" in options else options
    reconstruct(k, torch.ones(1, 32, dtype=torch.bool), method, **small)


def time_method(path, method: str, options: dict[str, Any], setup: Setup, batch_size: int = 1,
                device=None, repeats: int = 1, out_dir=None) -> dict[str, Any]:
    """Stage seconds of the best of ``repeats`` `reconstruct_file` runs (by total), its PSNR and,
    on CUDA, the peak of memory allocated by torch on the GPU (``gpu_peak_mb``)."""
    from medrecon.pipeline import reconstruct_file

    out = Path(out_dir or tempfile.gettempdir()) / "bench_pipeline_out.h5"
    best: dict[str, float] | None = None
    record: dict[str, Any] = {}
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(max(1, repeats)):
        stages: dict[str, float] = {}
        record = reconstruct_file(path, method, mask=_mask_spec(setup), out=out, overwrite=True,
                                  device=device, batch_size=batch_size, seed=0, options=options,
                                  timings=stages)
        if best is None or sum(stages.values()) < sum(best.values()):
            best = stages
    out.unlink(missing_ok=True)
    metrics = record.get("metrics") or {}
    gpu = {"gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20} if cuda else {}
    return {**{s: best[s] for s in STAGES}, "psnr": metrics.get("psnr"), **gpu}


def sigpy_references(path, setup: Setup, wanted: dict[str, Any], repeats: int = 1) -> dict:
    """SigPy's seconds (and PSNR) on slice 0 for the methods in ``wanted`` (cg-sense /
    l1-wavelet -> their resolved options): ``{"maps": s, method: {"reconstruct": s, "psnr"}}``."""
    import sigpy
    import sigpy.mri

    from medrecon.datasets.fastmri import FastMRIFile, center_crop
    from medrecon.metrics import psnr
    from medrecon.physics.coils import rss
    from medrecon.physics.fft import ifft2c
    from medrecon.physics.masks import acs_width, make_mask
    from medrecon.physics.mri import MultiCoilMRI

    with FastMRIFile(path) as f:
        k, crop = f.read_slice(0)["kspace"], f.recon_size
    H, W = k.shape[-2:]
    spec = _mask_spec(setup)
    m = make_mask(spec.kind, (H, W), spec.acceleration, spec.center_fraction, seed=spec.seed)
    acs = acs_width(m)
    y = (k * m).numpy()
    weights = np.broadcast_to(m.numpy().astype(np.float32), (H, W)).copy()
    ref = center_crop(rss(ifft2c(k)), crop).numpy()

    def score(img) -> float:
        return psnr(ref[None], center_crop(np.abs(np.asarray(img)), crop)[None].astype(np.float32))

    def calib():  # a fresh App per run: a finished App returns at once when run again
        return sigpy.mri.app.EspiritCalib(y, calib_width=min(24, acs), kernel_width=min(6, acs),
                                          show_pbar=False).run()
    mps, t_maps = best_of(calib, repeats)
    # SigPy divides by |first coil| for the phase reference: NaN where that is exactly 0 (outside
    # the object, after its crop); those pixels carry no signal
    mps = np.nan_to_num(mps)
    out: dict[str, Any] = {"maps": t_maps}
    for method, opts in wanted.items():
        if method == "cg-sense":
            def app(o=opts):
                return sigpy.mri.app.SenseRecon(y, mps, lamda=o.lam, weights=weights,
                                                max_iter=o.max_iter, show_pbar=False).run()
            img, t = best_of(app, repeats)
        elif method == "l1-wavelet":
            scale = float(MultiCoilMRI(torch.from_numpy(mps), m).adjoint(torch.from_numpy(y)).abs().max()) or 1.0

            def app(o=opts):
                return sigpy.mri.app.L1WaveletRecon(
                    y / scale, mps, o.lamda, weights=weights, wave_name=getattr(o, "wave_name", "db4"),
                    max_iter=o.max_iter, show_pbar=False).run()
            img, t = best_of(app, repeats)
            img = np.asarray(img) * scale
        else:
            continue
        out[method] = {"reconstruct": t, "psnr": score(img)}
    return out


# A small launcher runs the measured command: ``ru_maxrss`` includes the memory of the process
# image before ``exec``, so a child forked straight from this (large) process would report at
# least this process's RSS; the launcher's own few MB are below any real peak.
_LAUNCHER = ("import os, sys\n"
             "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
             "_, status, usage = os.wait4(pid, 0)\n"
             "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def peak_rss_mb(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Peak resident memory (MB) of a process running ``cmd``: its own ``ru_maxrss`` (`os.wait4`
    in a small launcher); a command that fails is a RuntimeError with the end of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        peak, log = Path(tmp) / "peak", Path(tmp) / "log"
        with open(log, "wb") as out:
            code = subprocess.call([sys.executable, "-S", "-c", _LAUNCHER, str(peak), *cmd],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        if code != 0 or not peak.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({code}): " + " | ".join(tail))
        kb = int(peak.read_text())
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def recon_command(path, method: str, options: dict[str, Any], setup: Setup, batch_size: int,
                  device, out) -> list[str]:
    """The ``medrecon recon`` command line equivalent to `time_method`'s call."""
    cmd = [sys.executable, "-m", "medrecon.cli", "recon", str(path), "--method", method,
           "--acceleration", str(setup.acceleration), "--center-fraction",
           str(setup.center_fraction), "--batch-size", str(batch_size), "--out", str(out),
           "--overwrite", "--quiet"]
    cmd += ["--device", str(device)] if device is not None else []
    for key, value in options.items():
        cmd += ["-o", f"{key}={value}"]
    return cmd


def run(methods=DEFAULT_METHODS, steps=DEFAULT_STEPS, setup: Setup = Setup(), batch_size: int = 1,
        device=None, threads: int | None = None, repeats: int = 1, sigpy: bool = True,
        memory: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every stage of each planned row, the SigPy references and the peak memory; return the
    result `format_table` renders (JSON-ready)."""
    from medrecon.registry import resolve_options, get_method

    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    rows = plan(methods, steps)
    say = progress or (lambda msg: None)
    if threads:
        torch.set_num_threads(threads)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                            if threads else {})}
    result: dict[str, Any] = {"setup": {**asdict(setup), "kspace": [setup.coils, 2 * setup.size, setup.size],
                                        "batch_size": batch_size},
                              "device": str(device or "cpu"), "threads": torch.get_num_threads(),
                              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                              "repeats": repeats, "rows": []}
    with tempfile.TemporaryDirectory(prefix="medrecon-bench-pipeline-") as tmp:
        path = write_input(tmp, setup)
        warmed: set[str] = set()
        for label, method, options in rows:
            say(f"{label}: medrecon recon")
            if method not in warmed:
                _warm_up(method, options, device or "cpu")
                warmed.add(method)
            row = {"label": label, "method": method, "options": options,
                   **time_method(path, method, options, setup, batch_size, device, repeats, tmp)}
            if memory:
                say(f"{label}: peak memory (child process)")
                cmd = recon_command(path, method, options, setup, batch_size, device,
                                    Path(tmp) / "bench_pipeline_child.h5")
                row["peak_rss_mb"] = peak_rss_mb(cmd, env)
            result["rows"].append(row)
        if sigpy:
            wanted = {m: resolve_options(get_method(m), {}) for _, m, _ in rows
                      if m in ("cg-sense", "l1-wavelet")}
            if wanted:
                say("SigPy references")
                result["sigpy"] = sigpy_references(path, setup, wanted, repeats)
        if memory:
            result["floor_rss_mb"] = peak_rss_mb([sys.executable, "-c", "import medrecon.pipeline"], env)
    _ratios(result)
    return result


def _ratios(result: dict[str, Any]) -> None:
    """SigPy seconds / ours per row with a SigPy reference (slice 0 against our per-slice mean)."""
    ref = result.get("sigpy") or {}
    n = result["setup"]["slices"]
    for row in result["rows"]:
        theirs = ref.get(row["method"])
        if theirs is None:
            continue
        maps, recon = row["maps"] / n, row["reconstruct"] / n
        row["sigpy"] = {"maps": ref["maps"], "reconstruct": theirs["reconstruct"],
                        "psnr": theirs["psnr"], "x_maps": ref["maps"] / maps if maps else None,
                        "x_reconstruct": theirs["reconstruct"] / recon if recon else None,
                        "x_as_called": (ref["maps"] + theirs["reconstruct"]) / (maps + recon)}


def format_table(result: dict[str, Any], markdown: bool = True) -> str:
    """One row per method: stage seconds per slice, SigPy seconds and ratios, PSNR, peak RSS."""
    n = result["setup"]["slices"]

    def s(v):
        return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}"

    def x(v):
        return "-" if v is None else f"{v:.1f}x"

    head = ["method", "read s", "maps s", "recon s", "write s", "total s", "SigPy maps s",
            "SigPy recon s", "x maps", "x recon", "x as called", "PSNR", "SigPy PSNR", "peak RSS MB"]
    gpu = any("gpu_peak_mb" in r for r in result["rows"])
    head += ["GPU peak MB"] if gpu else []
    body = []
    for r in result["rows"]:
        sp = r.get("sigpy") or {}
        body.append([r["label"], *(s(r[st] / n) for st in STAGES), s(sum(r[st] for st in STAGES) / n),
                     s(sp.get("maps")), s(sp.get("reconstruct")), x(sp.get("x_maps")),
                     x(sp.get("x_reconstruct")), x(sp.get("x_as_called")),
                     "-" if r.get("psnr") is None else f"{r['psnr']:.2f}",
                     "-" if sp.get("psnr") is None else f"{sp['psnr']:.2f}",
                     "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"])
        if gpu:
            body[-1].append(f"{r['gpu_peak_mb']:.0f}")
    st = result["setup"]
    lines = [render_table(head, body, markdown), "",
             f"Seconds per slice ({n} slice(s), batch size {st['batch_size']}, {st['coils']} coils, "
             f"{st['kspace'][1]}x{st['kspace'][2]} k-space, {st['size']}x{st['size']} recon, "
             f"{st['acceleration']:g}x equispaced, centre {st['center_fraction']:g}); device "
             f"{result['device']}, {result['threads']} thread(s), best of {result['repeats']}; "
             "ratios = SigPy / medrecon on slice 0 (SigPy on the CPU)."]
    if "floor_rss_mb" in result:
        lines.append(f"Peak RSS of `medrecon recon` in a child process; importing medrecon alone: "
                     f"{result['floor_rss_mb']:.0f} MB.")
    return "\n".join(lines)
