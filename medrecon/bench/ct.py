"""`medrecon bench ct`: low-dose CT denoising quality and speed on a held-out simulated test set.

Test set: ``medrecon.ct.data.simulate_pairs(n_test, size, i0, sigma_e, seed=test_seed)`` -- the
volumes get simulator seeds ``test_seed * 1000 + v`` (default test_seed 1: seeds >= 1000, never
seen in training, whose recipes use 0 .. 999); ``size`` / ``i0`` / ``sigma_e`` default to the
values recorded in the checkpoints' training data.  NDCT = FBP of the noise-free sinogram, LDCT =
FBP of the low-dose one (both in HU / 1000).

Methods (rows): ``fbp`` (the LDCT itself), the pixel-space conditional DDPM with each
``--pixel-solvers`` entry ``solver:steps[:key=value...]`` (default ``ddpm:1000``, ``ddim:50``,
``dpm-solver++:20``, and the item-4 variants ``ddim:50:eta=1``, ``ddim:50:clip_x0=1.5`` (x0
clipped to +-1500 HU) and ``ddim:50:ldct_above=300`` / ``dpm-solver++:20:ldct_above=300`` (x0 =
LDCT above t = 300, chosen on validation slices of seed 2, see docs/bench_ct.md)), and latent
cold diffusion (``--cold-steps``, default T).
Metrics (`medrecon.ct.evaluate.ct_metrics`): RMSE in HU inside the body (NDCT > -500 HU), PSNR
and SSIM on [-1000, 1000] HU.  Time: all test slices in one batch, after a one-slice warm-up,
wall time / slices (``--threads`` torch threads).  Ratios: each pixel-DDPM row's time per slice
over latent cold diffusion's (sampling speed-up); training time of the pixel DDPM over that of
latent cold diffusion (autoencoder + latent network + latent encoding), from the
``train_seconds`` the recipes store in the checkpoints, and, with ``--train-steps K`` (default
5), per-step times measured here, one network after the other in this process, times the step
counts of the checkpoints (the recipes may have run side by side on a shared machine).

Outputs in ``--out``: ``bench_ct.md`` (table + ratios + the command), ``bench_ct.json``,
``bench_ct_grid.png`` (NDCT, LDCT and every method on ``--figure-slices`` slices with |error|
maps in HU) and ``bench_ct_speed.png`` (RMSE vs time per slice, log time), written by
`medrecon.bench.ct_figures`; the options are in `medrecon.bench.commands.ct`.  The operator
timings against scikit-image are another command: ``medrecon bench ct-operators``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medrecon.options import parse_pairs
from medrecon.sample import SOLVERS

__all__ = ["DEFAULT_SOLVERS", "run_bench", "parse_solver", "format_markdown"]

DEFAULT_SOLVERS = ("ddpm:1000", "ddim:50", "dpm-solver++:20", "ddim:50:eta=1",
                   "ddim:50:clip_x0=1.5", "ddim:50:ldct_above=300", "dpm-solver++:20:ldct_above=300")


def parse_solver(spec: str) -> tuple[str, int, dict]:
    """``"ddim:50:eta=1:clip_x0=2"`` -> ``("ddim", 50, {"eta": 1.0, "clip_x0": 2.0})``."""
    parts = spec.split(":")
    if len(parts) < 2:
        raise ValueError(f"--pixel-solvers: expected solver:steps[:key=value...], got {spec!r}")
    solver = parts[0]
    if solver not in SOLVERS:
        raise ValueError(f"--pixel-solvers {spec!r}: solver must be one of {', '.join(SOLVERS)}")
    try:
        steps = int(parts[1])
    except ValueError:
        raise ValueError(f"--pixel-solvers {spec!r}: steps must be an integer") from None
    opts = {}
    for k, v in parse_pairs(parts[2:], f"--pixel-solvers {spec!r}:").items():
        try:
            opts[k] = float(v)
        except ValueError:
            raise ValueError(f"--pixel-solvers {spec!r}: option {k} must be a number") from None
    return solver, steps, opts


def _extra(directory: Path) -> dict:
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: no checkpoint config")
    return json.loads(cfg.read_text()).get("extra", {}) or {}


def _train_seconds(pixel_dir: Path, latent_dir: Path) -> dict:
    px, lat = _extra(pixel_dir), _extra(latent_dir / "latent")
    ae = _extra(latent_dir / "autoencoder")
    out = {"pixel_ddpm_s": px.get("train_seconds"), "pixel_ddpm_steps": px.get("steps"),
           "autoencoder_s": ae.get("train_seconds"), "autoencoder_steps": ae.get("steps"),
           "latent_net_s": lat.get("train_seconds"), "latent_net_steps": lat.get("steps"),
           "latent_encode_s": lat.get("encode_seconds"), "batch_size": px.get("batch_size"),
           "threads": px.get("torch_threads")}
    if None not in (out["pixel_ddpm_s"], out["autoencoder_s"], out["latent_net_s"]):
        total = out["autoencoder_s"] + out["latent_net_s"] + (out["latent_encode_s"] or 0.0)
        out["latent_total_s"] = total
        out["ratio_pixel_over_latent_total"] = out["pixel_ddpm_s"] / total
    return out


def _time_train_steps(pixel, ae, cold, nd, ld, k: int, batch: int) -> dict:
    """Seconds per training step of each network, measured here one after the other."""
    import copy

    from medrecon.ct.autoencoder import ae_loss, encode
    from medrecon.ct.cold_diffusion import cold_loss
    from medrecon.ct.pixel_ddpm import ddpm_loss

    g = torch.Generator().manual_seed(0)
    x, c = nd[:batch], ld[:batch]
    z0, zt = encode(ae, x), encode(ae, c)

    def timed(net, loss):
        net = copy.deepcopy(net)
        net.train()
        net.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
        best = []
        for i in range(k + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss(net).backward()
            opt.step()
            if i:  # the first step is a warm-up
                best.append(time.perf_counter() - t0)
        return float(np.median(best))

    return {"pixel_ddpm": timed(pixel, lambda m: ddpm_loss(m, x, c, g)),
            "autoencoder": timed(ae, lambda m: ae_loss(m, torch.cat([x, c]), 1e-6, g)),
            "latent_net": timed(cold, lambda m: cold_loss(m, z0, zt, g))}


def run_bench(pixel_dir, latent_dir, *, n_test: int = 8, test_seed: int = 1, size=None, i0=None,
              sigma_e=None, pixel_solvers=DEFAULT_SOLVERS, cold_steps=None, train_steps: int = 5,
              seed: int = 0, device: str = "cpu", progress: bool = False, on_row=None) -> dict:
    """Evaluate everything; returns a JSON-able dict (rows, ratios, training) plus the images
    under the key ``"_images"`` (name -> HU array) for the figure.  ``on_row(row)`` is called
    after each method (e.g. to save partial results of a long run)."""
    from medrecon.ct.autoencoder import decode, encode, load_autoencoder
    from medrecon.ct.cold_diffusion import load_cold_diffusion, reconstruct_cold
    from medrecon.ct.data import simulate_pairs, to_hu
    from medrecon.ct.evaluate import ct_metrics
    from medrecon.ct.pixel_ddpm import load_pixel_ddpm, sample_pixel_ddpm

    pixel_dir, latent_dir = Path(pixel_dir), Path(latent_dir)
    if test_seed < 1:
        raise ValueError(f"--test-seed must be >= 1 (volume seeds test_seed * 1000 + v must not "
                         f"overlap the training seeds 0..999), got {test_seed}")
    data = _extra(pixel_dir).get("data", {})
    size = int(size or data.get("size") or 0)
    if size < 16:
        raise ValueError("--size: not recorded in the checkpoint; pass --size")
    i0 = float(i0 or data.get("i0", 1e4))
    sigma_e = float(sigma_e if sigma_e is not None else data.get("sigma_e", 5.0))
    dev = torch.device(device)
    specs = [parse_solver(s) if isinstance(s, str) else tuple(s) for s in pixel_solvers]
    pixel = load_pixel_ddpm(pixel_dir, dev)
    ae = load_autoencoder(latent_dir / "autoencoder", dev)
    cold = load_cold_diffusion(latent_dir / "latent", dev)
    t0 = time.perf_counter()
    d = simulate_pairs(n_test, size, i0=i0, sigma_e=sigma_e, seed=test_seed)
    sim_s = time.perf_counter() - t0
    nd, ld = d["ndct"].to(dev), d["ldct"].to(dev)

    methods = {"FBP (LDCT)": lambda x: (x.clone(), 0)}
    for solver, steps, opts in specs:
        name = f"pixel DDPM {solver} {steps}" + "".join(f" {k}={v:g}" for k, v in opts.items())

        def run(x, solver=solver, steps=steps, opts=dict(opts)):
            g = torch.Generator(device=x.device).manual_seed(seed)
            return sample_pixel_ddpm(pixel, x, solver, steps, generator=g, **opts)
        methods[name] = run
    methods[f"latent cold diffusion T={cold.T}" + (f" steps={cold_steps}" if cold_steps else "")] = \
        lambda x: reconstruct_cold(cold, ae, x, cold_steps)

    with torch.no_grad():  # warm-up: one network call each (allocations, kernels)
        pixel(ld[:1], torch.tensor([500]), ld[:1])
        reconstruct_cold(cold, ae, ld[:1], 1)
    rows, images = [], {"NDCT": to_hu(nd).cpu().numpy()[:, 0]}  # the FBP row is the LDCT
    for name, fn in methods.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            out, nfe = fn(ld)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        dt = time.perf_counter() - t0
        finite = bool(torch.isfinite(out).all())
        m = ct_metrics(nd.cpu(), torch.nan_to_num(out.cpu(), 0.0, 10.0, -10.0))
        rows.append({"method": name, **m, "s_per_slice": dt / n_test, "nfe": int(nfe),
                     "finite": finite})
        images[name] = to_hu(out).cpu().numpy()[:, 0]
        if on_row is not None:
            on_row(rows[-1])
        if progress:
            print(f"{name}: RMSE {m['rmse_hu']:.1f} HU, {dt / n_test:.4f} s/slice", file=sys.stderr)
    ceiling = ct_metrics(nd.cpu(), decode(ae, encode(ae, nd)).cpu())
    cold_row = rows[-1]
    speed = {r["method"]: r["s_per_slice"] / cold_row["s_per_slice"] for r in rows
             if r["method"].startswith("pixel")}
    training = _train_seconds(pixel_dir, latent_dir)
    if train_steps:
        per = _time_train_steps(pixel, ae, cold, nd, ld, train_steps, int(training.get("batch_size") or 8))
        training["measured_s_per_step"] = per
        ps, aes, ls = (training.get("pixel_ddpm_steps"), training.get("autoencoder_steps"),
                       training.get("latent_net_steps"))
        if None not in (ps, aes, ls):
            training["measured_ratio_pixel_over_latent_total"] = (
                per["pixel_ddpm"] * ps / (per["autoencoder"] * aes + per["latent_net"] * ls))
        training["measured_ratio_per_step_pixel_over_latent_net"] = per["pixel_ddpm"] / per["latent_net"]
    return {"config": {"n_test": n_test, "test_seed": test_seed, "size": size, "i0": i0,
                       "sigma_e": sigma_e, "pixel": str(pixel_dir), "latent": str(latent_dir),
                       "seed": seed, "device": str(dev), "torch_threads": torch.get_num_threads(),
                       "simulate_s": sim_s, "cold_T": cold.T, "cold_steps": cold_steps},
            "rows": rows, "sampling_speedup_vs_pixel": speed, "training": training,
            "autoencoder_ceiling_D_E_ndct": ceiling, "_images": images}


def format_markdown(res: dict) -> str:
    lines = ["| method | RMSE (HU, body) | PSNR (dB) | SSIM | s / slice | NFE | speed-up of cold diffusion |",
             "|---|---|---|---|---|---|---|"]
    sp = res["sampling_speedup_vs_pixel"]
    for r in res["rows"]:
        flag = "" if r["finite"] else " (NaN/Inf)"
        ratio = f"{sp[r['method']]:.1f}x" if r["method"] in sp else "-"
        lines.append(f"| {r['method']}{flag} | {r['rmse_hu']:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['s_per_slice']:.4f} | {r['nfe']} | {ratio} |")
    t = res["training"]
    lines += ["", "Training (from the checkpoints; seconds of optimisation):", ""]
    lines.append(f"- pixel DDPM: {t.get('pixel_ddpm_s', 0):.0f} s for {t.get('pixel_ddpm_steps')} steps")
    lines.append(f"- latent cold diffusion: autoencoder {t.get('autoencoder_s', 0):.0f} s "
                 f"({t.get('autoencoder_steps')} steps) + latent network {t.get('latent_net_s', 0):.0f} s "
                 f"({t.get('latent_net_steps')} steps) + encoding {t.get('latent_encode_s') or 0:.1f} s")
    if "ratio_pixel_over_latent_total" in t:
        lines.append(f"- training-time ratio pixel / latent (recorded): {t['ratio_pixel_over_latent_total']:.2f}")
    if "measured_s_per_step" in t:
        m = t["measured_s_per_step"]
        lines.append(f"- measured here, s per step (batch {t.get('batch_size')}): pixel DDPM "
                     f"{m['pixel_ddpm']:.3f}, autoencoder {m['autoencoder']:.3f}, latent network "
                     f"{m['latent_net']:.3f}; per step pixel / latent network = "
                     f"{t['measured_ratio_per_step_pixel_over_latent_net']:.2f}")
        if "measured_ratio_pixel_over_latent_total" in t:
            lines.append(f"- training-time ratio at the checkpoints' step counts (measured per-step "
                         f"times): {t['measured_ratio_pixel_over_latent_total']:.2f}")
    c = res["autoencoder_ceiling_D_E_ndct"]
    lines.append(f"- autoencoder ceiling D(E(NDCT)) vs NDCT: RMSE {c['rmse_hu']:.1f} HU, PSNR "
                 f"{c['psnr']:.2f} dB, SSIM {c['ssim']:.4f}")
    return "\n".join(lines)
