"""`medrecon bench recon`: MRI reconstruction quality vs speed on a held-out simulated test set.

Test set: ``--slices`` multi-coil brain slices, slice i the one-slice volume of
``medrecon.datasets.simulate_mri.simulate_mri_volume(seed=--seed + i)`` (seeds >= 1000 are
held out: training sets use 0..999): 2x readout-oversampled k-space reconstructed on that grid and
cropped to the ``--size`` x ``--size`` recon matrix, as ``medrecon recon`` does with a fastMRI file
(``--fov full``), or with the oversampling removed first (``--fov crop``: inverse FFT, central
``--size`` rows, FFT -- exact, the readout is fully sampled; half the cost per step).  Reference:
the RSS of the fully sampled coil images on the recon matrix (fastMRI's target).  Masks (``--masks``): the fastMRI kinds of
``medrecon.physics.masks`` (presets below, or ``KIND:R:CENTER_FRACTION``), mask seed = the
slice's simulator seed.

Every row is ``medrecon.reconstruct(kspace, mask, method, seed=--sample-seed, **options)`` per
slice -- the registry, with ESPIRiT maps estimated inside as for any user -- scored with
``medrecon.metrics.evaluate`` on the stack of slices (fastMRI conventions); seconds per slice
is ``ReconResult.seconds`` (ESPIRiT included; one untimed 1-step call per method first, see
`warm_up`) and NFE ``ReconResult.nfe``.  Rows:

- classical: zero-filled, cg-sense, l1-wavelet (default options);
- ``dds`` / ``ddnm``: every generic solver (``--solvers``; ``-o ddnm.solver=X``: X only) through the
  method's ``solver`` option at each NFE budget (``--nfe``; steps from the budget as in ``medrecon bench solvers``:
  Heun 2N - 1 calls, PNDM 12 warm-up calls), with each DeepCache interval in ``--deepcache``
  (1 = off; the methods' ``cache`` option: ``medrecon.accel.DeepCacheUNet`` around the prior's U-Net, a fresh cache per slice);
- ``ccdf``: each NFE budget, steps = NFE / t0;
- ``score-mri`` / ``hfs-sde`` / ``spirit-diffusion`` / ``dps``: each of ``--score-steps`` /
  ``--hfs-steps`` / ``--spirit-steps`` / ``--dps-steps``; hfs-sde only where the mask holds the
  prior's low-frequency block M_L (else "n/a");
- ``fdmr`` when registered (``checkpoint`` = ``--fdmr-checkpoint``); any other registered
  method: one row with its defaults.  ``-o [METHOD.]KEY=VALUE`` sets options.

Goals printed (never adjusted): (1) per mask, the best sampler at <= 50 NFE within 0.5 dB PSNR
of the best slow (> 50 NFE) diffusion sampler; (2) at 8x, every diffusion row above both
CG-SENSE and L1-wavelet.  ``--out`` receives ``bench_recon.md``, ``bench_recon.json`` (rewritten
after every row, so a cut run keeps what finished), ``bench_recon_psnr_nfe.png`` and
``bench_recon_images.png``.  ``--merge A.json B.json --out DIR`` runs nothing and reports the union of
runs on the same slices (`medrecon.bench_recon_merge`: e.g. the slow samplers run as a separate process).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from medrecon.datasets.fastmri import center_crop
from medrecon.metrics import evaluate
from medrecon.physics.coils import rss
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import KINDS, make_mask
from medrecon.reconstruct import acs_width, reconstruct
from medrecon.registry import get_method, resolve_options
from medrecon.sample import SOLVERS

__all__ = ["MASKS", "Entry", "Row", "test_set", "make_test_mask", "plan", "warm_up", "run_rows", "check_goals",
           "format_table", "add_arguments", "main"]

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
_STEPS_FAMILIES = {"score-mri": "score_steps", "hfs-sde": "hfs_steps", "spirit-diffusion": "spirit_steps",
                   "dps": "dps_steps"}
FAST_NFE = 50          # goal 1: a sampler at <= 50 NFE ...
GOAL_DB = 0.5          # ... within 0.5 dB PSNR of the best slow sampler
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


# ------------------------------------------------------------------------------------ data
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
    kind, acc, cf = parse_mask(name)
    acc = int(acc) if float(acc).is_integer() else acc
    return make_mask(kind, shape, acc, cf, seed=seed)


# ------------------------------------------------------------------------------------ plan
def _split(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _ints(text, what: str) -> list[int]:
    try:
        vals = [int(t) for t in _split(text)]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"{what}: expected integers >= 1, got {vals}")
    return vals


def method_options(families: list[str], pairs: list[str]) -> dict[str, dict[str, str]]:
    """``-o [METHOD.]KEY=VALUE`` pairs -> per-method option dicts (unqualified: every method having KEY)."""
    fields = {m: {f.name for f in dataclasses.fields(get_method(m).options)} for m in families}
    out: dict[str, dict[str, str]] = {m: {} for m in families}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        target, dot, key = key.rpartition(".")
        key = key.replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--option: expected [METHOD.]KEY=VALUE, got {pair!r}")
        targets = [target] if dot else [m for m in families if key in fields[m]]
        if dot and target not in out:
            raise ValueError(f"--option {pair!r}: {target!r} is not one of --methods ({', '.join(families)})")
        if not targets or any(key not in fields[t] for t in targets):
            raise ValueError(f"--option {pair!r}: no method in --methods has option {key!r}")
        for t in targets:
            out[t][key] = value
    return out


def _steps_for(solver: str, nfe: int, n_train: int = 1000) -> Optional[int]:
    from medrecon.bench_solvers import _steps_for as steps_for  # Heun 2N - 1, PNDM 12 warm-up calls

    return steps_for(solver, nfe, n_train)


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
                    n = _steps_for(solver, budget)
                    if n is None:
                        continue  # PNDM needs >= 13 calls
                    for dc in deepcache:
                        entries.append(Entry(fam, {**base, "solver": solver, "steps": n}, solver, dc))
        elif fam == "ccdf":
            t0 = float(resolve_options(spec, base).t0)
            for budget in nfe:
                entries.append(Entry(fam, {**base, "steps": max(1, round(budget / t0))}, base.get("solver", "ddim")))
        elif fam in _STEPS_FAMILIES:
            for n in steps[_STEPS_FAMILIES[fam]]:
                entries.append(Entry(fam, {**base, "steps": n}))
        else:
            entries.append(Entry(fam, base))
    for e in entries:
        resolve_options(get_method(e.method), e.options)
        if e.deepcache < 1:
            raise ValueError(f"--deepcache: intervals must be >= 1 (1 = off), got {e.deepcache}")
    return entries


# ------------------------------------------------------------------------------------ running
def _label(e: Entry | Row) -> str:
    return e.method + (f" {e.solver}" if e.solver else "") + (f" +DeepCache{e.deepcache}" if e.deepcache > 1 else "")


def run_entry(entry: Entry, mask_name: str, data: list[dict], sample_seed: int = 0,
              device: str | None = None) -> tuple[Row, Optional[np.ndarray]]:
    """Run one entry on every slice with mask ``mask_name``: its Row and the first slice's magnitude."""
    spec = get_method(entry.method)
    preds, secs, nfe, used = [], [], None, dict(entry.options)
    dev = torch.device(device) if device else torch.device("cpu")
    options = dict(entry.options, **({"cache": entry.deepcache} if entry.deepcache > 1 else {}))
    try:
        for d in data:
            k = d["kspace"].to(dev)
            m = make_test_mask(mask_name, tuple(k.shape[-2:]), d["seed"]).to(dev)
            res = reconstruct(k, m, entry.method, seed=sample_seed, **options)
            preds.append(center_crop(res.magnitude, tuple(d["target"].shape)).detach().cpu().float().numpy())
            secs.append(res.seconds)
            nfe, used = res.nfe, res.options
        metrics = evaluate(np.stack([d["target"].numpy() for d in data]), np.stack(preds))  # NaN -> ValueError
    except Exception as exc:  # a failing row is recorded and the bench goes on
        status = "n/a" if isinstance(exc, ValueError) and str(exc).startswith("mask") else "error"
        note = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return Row(mask_name, entry.method, entry.solver, entry.deepcache, None, None, None, None, None,
                   len(data), used, spec.kind, status, note), None
    return Row(mask_name, entry.method, entry.solver, entry.deepcache, nfe, metrics["psnr"], metrics["ssim"],
               metrics["nmse"], float(np.mean(secs)), len(data), used, spec.kind), preds[0]


def warm_up(entries: list[Entry], mask_name: str, d: dict, device: str | None = None) -> None:
    """One untimed call per diffusion method with its step counts set to 1, so that one-off costs
    (lazy imports, first-call kernel set-up, loading the prior) are not charged to its first row."""
    dev = torch.device(device) if device else torch.device("cpu")
    k = d["kspace"].to(dev)
    m = make_test_mask(mask_name, tuple(k.shape[-2:]), d["seed"]).to(dev)
    for method in dict.fromkeys(e.method for e in entries if get_method(e.method).kind == "diffusion"):
        e = next(e for e in entries if e.method == method)
        fields = {f.name for f in dataclasses.fields(get_method(method).options)}
        opts = {**e.options, **{f: 1 for f in ("steps", "refine_steps", "adapt_iters") if f in fields}}
        try:
            reconstruct(k, m, method, seed=0, **opts)
        except Exception:  # noqa: BLE001 -- the timed rows report any error
            pass


def run_rows(entries: list[Entry], masks: list[str], data: list[dict], sample_seed: int = 0,
             device: str | None = None, on_row=None) -> tuple[list[Row], dict]:
    """Every (mask, entry), mask-major, after `warm_up`; ``on_row(row, index, total)`` after each.
    Returns the rows and ``{row index: first-slice magnitude}``."""
    if masks and data:
        warm_up(entries, masks[0], data[0], device)
    rows, images = [], {}
    total = len(masks) * len(entries)
    for mask in masks:
        for e in entries:
            row, img = run_entry(e, mask, data, sample_seed, device)
            rows.append(row)
            if img is not None:
                images[len(rows) - 1] = img
            if on_row is not None:
                on_row(row, len(rows), total)
    return rows, images


# ------------------------------------------------------------------------------------ goals
def check_goals(rows: list[Row]) -> list[dict]:
    """Goal verdicts from the measured rows (module docstring); nothing is adjusted."""
    ok = [r for r in rows if r.status == "ok"]
    out = []
    for mask in dict.fromkeys(r.mask for r in ok):
        diff = [r for r in ok if r.mask == mask and r.kind == "diffusion"]
        slow = [r for r in diff if r.nfe is not None and r.nfe > FAST_NFE]
        fast = [r for r in diff if r.nfe is not None and r.nfe <= FAST_NFE]
        if slow and fast:
            bs, bf = max(slow, key=lambda r: r.psnr), max(fast, key=lambda r: r.psnr)
            classical = [r for r in ok if r.mask == mask and r.kind == "classical"]
            context = ""
            if classical:  # context, not part of the verdict: is the slow reference itself any good?
                bc = max(classical, key=lambda r: r.psnr)
                context = f"; best classical: {bc.method} {bc.psnr:.2f} dB"
            out.append({"goal": "fast-vs-slow", "mask": mask, "met": bf.psnr >= bs.psnr - GOAL_DB,
                        "text": f"best <= {FAST_NFE} NFE: {_label(bf)} ({bf.nfe} NFE) {bf.psnr:.2f} dB vs best slow "
                                f"{_label(bs)} ({bs.nfe} NFE) {bs.psnr:.2f} dB (gap {bs.psnr - bf.psnr:+.2f} dB, "
                                f"allowed {GOAL_DB} dB){context}"})
        else:
            out.append({"goal": "fast-vs-slow", "mask": mask, "met": None,
                        "text": "not measured: needs both a slow (> 50 NFE) and a fast diffusion row"})
        if parse_mask(mask)[1] == 8:
            base = [r for r in ok if r.mask == mask and r.method in ("cg-sense", "l1-wavelet")]
            if len(base) < 2 or not diff:
                out.append({"goal": "above-classical-8x", "mask": mask, "met": None,
                            "text": "not measured: needs cg-sense, l1-wavelet and diffusion rows"})
                continue
            bar = max(r.psnr for r in base)
            below = [r for r in diff if r.psnr <= bar]
            out.append({"goal": "above-classical-8x", "mask": mask, "met": not below,
                        "text": f"{len(diff) - len(below)}/{len(diff)} diffusion rows above max(CG-SENSE, L1-wavelet) "
                                f"= {bar:.2f} dB" + (f"; below: {', '.join(f'{_label(r)} ({r.psnr:.2f})' for r in below)}"
                                                     if below else "")})
    return out


def _verdict(met) -> str:
    return {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[met]


def format_table(rows: list[Row]) -> str:
    lines = ["| mask | method | solver | DeepCache | NFE | PSNR (dB) | SSIM | NMSE | s/slice |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.status != "ok":
            continue
        lines.append(f"| {r.mask} | {r.method} | {r.solver or '-'} | {r.deepcache if r.deepcache > 1 else '-'} | "
                     f"{r.nfe} | {r.psnr:.2f} | {r.ssim:.4f} | {r.nmse:.4f} | {r.seconds_per_slice:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ outputs
def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def write_results(folder: Path, rows: list[Row], meta: dict) -> None:
    goals = check_goals(rows)
    other = [r for r in rows if r.status != "ok"]
    md = [f"# medrecon bench recon\n\n`{meta['command']}`\n\n{meta['description']}\n", format_table(rows), "",
          "## Goals", ""] + [f"- **{_verdict(g['met'])}** ({g['goal']}, {g['mask']}): {g['text']}" for g in goals]
    if other or meta.get("methods_left_out"):
        md += ["", "## Rows not run", ""] + [f"- {r.mask} {_label(r)}: {r.status}: {r.note}" for r in other]
        md += [f"- {note}" for note in meta.get("methods_left_out", [])]
    text = "\n".join(md) + "\n"
    payload = json.dumps({**meta, "goals": goals, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1)
    _atomic(folder / "bench_recon.md", lambda p: Path(p).write_text(text))
    _atomic(folder / "bench_recon.json", lambda p: Path(p).write_text(payload))


# ------------------------------------------------------------------------------------ CLI
QUICK = {"slices": 1, "masks": "8x-equispaced,10x-uniform-acs24", "nfe": "10", "solvers": "ddim,dpm-solver++",
         "deepcache": "1,2", "score_steps": "10", "hfs_steps": "10", "spirit_steps": "10", "dps_steps": "10"}


def add_arguments(p) -> None:
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default: {','.join(DEFAULT_FAMILIES)}; "
                   "fdmr when registered)")
    p.add_argument("--masks", default=",".join(MASKS), help="mask presets or KIND:R:CENTER_FRACTION, comma-separated")
    p.add_argument("--nfe", default="10,20,50", help="NFE budgets of dds/ddnm (each solver) and ccdf")
    p.add_argument("--solvers", default=",".join(SOLVERS), help="generic solvers run through dds/ddnm")
    p.add_argument("--deepcache", default="1,3", help="DeepCache intervals for dds/ddnm rows (1 = off)")
    p.add_argument("--score-steps", default="1000", help="score-mri N values")
    p.add_argument("--hfs-steps", default="1000,100", help="hfs-sde N values")
    p.add_argument("--spirit-steps", default="1000", help="spirit-diffusion N values")
    p.add_argument("--dps-steps", default="1000", help="dps N values")
    p.add_argument("--slices", type=int, default=4, help="number of held-out test slices")
    p.add_argument("--seed", type=int, default=1000, help="simulator seed of the first slice (>= 1000)")
    p.add_argument("--size", type=int, default=128, help="recon matrix (square)")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr", type=float, default=30.0, help="simulator k-space SNR")
    p.add_argument("--fov", default="full", choices=FOVS, help="full: reconstruct the readout-oversampled grid "
                   "and crop (as medrecon recon); crop: remove the oversampling first")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the diffusion samplers")
    p.add_argument("--fdmr-checkpoint", default=None, help="DDGAN checkpoint for the fdmr rows (no DDGAN "
                   "ships with medrecon: without it fdmr is left out of the default methods)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method option, repeatable (e.g. -o dds.checkpoint=DIR)")
    p.add_argument("--quick", action="store_true", help="tiny run: 1 slice, 2 masks, NFE 10, two solvers, N = 10 "
                   "(explicit flags still win)")
    p.add_argument("--out", default=None, help="folder for bench_recon.{md,json} and the figures")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: merge the bench_recon.json of runs on the same slices into one table, goal "
                   "check and PSNR-vs-NFE figure (with --out)")


def _quick_defaults(args) -> None:
    import argparse

    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    ref = vars(defaults.parse_args([]))
    for key, value in QUICK.items():
        if getattr(args, key) == ref[key]:
            setattr(args, key, value)


def main(args=None) -> int:
    if args is None or isinstance(args, list):
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(args)
    if getattr(args, "merge", None):
        from medrecon.bench_recon_merge import main_merge

        return main_merge(args.merge, args.out, args.overwrite)
    if args.quick:
        _quick_defaults(args)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    from medrecon.registry import list_methods

    registered = {s.name for s in list_methods()}
    fdmr_ckpt = args.fdmr_checkpoint
    families = _split(args.methods) if args.methods else [
        m for m in DEFAULT_FAMILIES if m in registered and (m != "fdmr" or fdmr_ckpt
                                                           or any(o.startswith("fdmr.") for o in args.option))]
    masks = _split(args.masks)
    for m in masks:
        parse_mask(m)
    options = method_options(families, args.option)
    skipped = []
    if not args.methods:  # by default, diffusion methods without a prior (none shipped, none given) are left out
        for fam in families[:]:
            spec = get_method(fam)
            if spec.kind == "diffusion" and getattr(resolve_options(spec, options[fam]), "checkpoint", None) == "":
                families.remove(fam)
                skipped.append(f"{fam}: no checkpoint (no builtin prior fits it); pass -o {fam}.checkpoint=DIR")
    if "fdmr" in families and "checkpoint" not in options["fdmr"] and fdmr_ckpt:
        options["fdmr"]["checkpoint"] = fdmr_ckpt
    steps = {k: _ints(getattr(args, k), "--" + k.replace("_", "-")) for k in _STEPS_FAMILIES.values()}
    entries = plan(families, _ints(args.nfe, "--nfe"), _split(args.solvers), _ints(args.deepcache, "--deepcache"),
                   steps, options)
    folder = Path(args.out) if args.out else None
    if folder is not None:
        existing = [n for n in OUTPUTS if (folder / n).exists()]
        if existing and not args.overwrite:
            raise FileExistsError(f"--out {folder}: {', '.join(existing)} exist(s); pass --overwrite to replace")
        folder.mkdir(parents=True, exist_ok=True)
    data = test_set(args.slices, args.seed, args.size, args.coils, args.snr, args.fov)
    masks_info = {}
    for m in masks:
        mk = make_test_mask(m, tuple(data[0]["kspace"].shape[-2:]), data[0]["seed"])
        masks_info[m] = {"kind_acceleration_center_fraction": list(parse_mask(m)), "acs_lines": acs_width(mk),
                         "sampled_fraction_slice0": float(mk.float().mean())}
    cli = sys.argv[1:3] == ["bench", "recon"]
    meta = {"command": "medrecon bench recon " + shlex.join(sys.argv[3:]) if cli else "medrecon.bench_recon.main(...)",
            "description": (f"{args.slices} held-out simulated brain slice(s) (simulator seeds {args.seed}.."
                            f"{args.seed + args.slices - 1}, {args.coils} coils, SNR {args.snr:g}, k-space "
                            f"{tuple(data[0]['kspace'].shape[-2:])} ({'readout-oversampled, as medrecon recon' if args.fov == 'full' else 'readout oversampling removed'}), "
                            f"scored on the {args.size}x{args.size} recon matrix); sample seed {args.sample_seed}; "
                            f"{torch.get_num_threads()} torch thread(s) on {platform.machine()} "
                            f"({os.cpu_count()} CPUs), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."),
            "masks": masks_info, "slices": [d["seed"] for d in data], "threads": torch.get_num_threads(),
            "methods_left_out": skipped}
    for note in skipped:
        print(f"bench recon: left out {note}", file=sys.stderr)
    print(f"bench recon: {len(entries)} rows x {len(masks)} masks on {len(data)} slice(s)", file=sys.stderr)
    done: list[Row] = []
    start = time.perf_counter()

    def on_row(row: Row, i: int, total: int) -> None:
        done.append(row)
        what = (f"{row.psnr:.2f} dB, {row.nfe} NFE, {row.seconds_per_slice:.2f} s/slice" if row.status == "ok"
                else f"{row.status}: {row.note}")
        print(f"[{i}/{total} {time.perf_counter() - start:.0f}s] {row.mask} {_label(row)}: {what}", file=sys.stderr,
              flush=True)
        if args.json:
            print(json.dumps(dataclasses.asdict(row)), flush=True)
        if folder is not None:
            write_results(folder, done, meta)

    rows, images = run_rows(entries, masks, data, args.sample_seed, args.device, on_row)
    if folder is not None:
        from medrecon.bench_recon_plots import write_figures

        write_figures(folder, rows, images, data[0]["target"].numpy())
    if not args.json:
        print(format_table(rows))
        for r in rows:
            if r.status != "ok":
                print(f"not run: {r.mask} {_label(r)}: {r.status}: {r.note}")
    for g in check_goals(rows):
        print(f"goal {g['goal']} [{g['mask']}]: {_verdict(g['met'])}: {g['text']}", file=sys.stderr if args.json else sys.stdout)
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
