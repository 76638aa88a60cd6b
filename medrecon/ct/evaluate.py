"""Evaluate FBP, the pixel-space conditional DDPM and latent cold diffusion on simulated LDCT slices.

Metrics (per method, over the test slices; images converted back to HU with ``to_hu``):

- ``rmse_hu``: RMSE in HU inside the body (NDCT > -500 HU, ``medrecon.ct.data.body_mask``),
  pooled over all body pixels of all slices, no clipping.
- ``psnr`` / ``ssim``: on HU images clipped to the window [-1000, 1000] HU with data_range =
  2000 HU, whole image; SSIM is scikit-image's ``structural_similarity`` (7x7 uniform window),
  averaged over slices; PSNR pooled over the test set.  (Not fastMRI's ``medrecon.metrics``
  convention, whose data_range = max of the target suits magnitude MRI, not signed HU.)
- ``s_per_slice``: wall time of the whole reconstruction of the (batched) test set divided by the
  number of slices, after one warm-up call on one slice; ``nfe``: network calls per batch.

``run_tiny_benchmark`` simulates train/test sets, trains the autoencoder, the latent network and
the pixel DDPM on the CPU for a given number of steps, times training, evaluates everything and
returns a JSON-able dict including the autoencoder's own error on the NDCT test slices
(D(E(NDCT)) vs NDCT: a floor for any latent method), the sampling-speed ratio (pixel DDPM time / latent cold
diffusion time) and the training-time ratio.  It is a toy-scale CPU run (tiny networks, 32x32 or
64x64, minutes of training): its numbers say nothing about the paper's 256x256 GPU claims.
``python -m medrecon.ct.evaluate --help``.
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable

import numpy as np
import torch

from .autoencoder import CTAutoencoder, decode, encode, train_autoencoder
from .cold_diffusion import LatentColdDiffusion, reconstruct_cold, train_cold_diffusion
from .data import CTPairDataset, body_mask, check_pair, to_hu
from .pixel_ddpm import ConditionalDDPM, sample_pixel_ddpm, train_pixel_ddpm

__all__ = ["WINDOW_HU", "ct_metrics", "default_methods", "evaluate_methods", "run_tiny_benchmark",
           "format_table"]

WINDOW_HU = (-1000.0, 1000.0)
DEFAULT_PIXEL_SOLVERS = (("ddpm", 1000), ("ddim", 50), ("dpm-solver++", 20), ("ddim", 50, {"eta": 1.0}))


def ct_metrics(ndct: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    """``{"rmse_hu", "psnr", "ssim"}`` of normalised images ``pred`` against ``ndct`` ``[S, 1, H, W]``."""
    from skimage.metrics import structural_similarity

    check_pair(ndct, pred)
    gt_hu, pr_hu = to_hu(ndct.detach().cpu().double()), to_hu(pred.detach().cpu().double())
    mask = body_mask(gt_hu)
    if not bool(mask.any()):
        raise ValueError("ndct: no pixel inside the body (all below -500 HU)")
    rmse = float((pr_hu - gt_hu)[mask].pow(2).mean().sqrt())
    lo, hi = WINDOW_HU
    g = gt_hu.clamp(lo, hi).numpy()[:, 0]
    p = pr_hu.clamp(lo, hi).numpy()[:, 0]
    mse = float(np.mean((g - p) ** 2))
    ssim = float(np.mean([structural_similarity(a, b, data_range=hi - lo) for a, b in zip(g, p)]))
    if mse == 0:  # JSON records never hold Infinity: null with the reason
        return {"rmse_hu": rmse, "psnr": None, "ssim": ssim,
                "reason": "prediction equals the reference in the window (PSNR infinite)"}
    return {"rmse_hu": rmse, "psnr": 10 * math.log10((hi - lo) ** 2 / mse), "ssim": ssim}


Method = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def default_methods(pixel: ConditionalDDPM | None = None, autoencoder: CTAutoencoder | None = None,
                    cold: LatentColdDiffusion | None = None, *, pixel_solvers=DEFAULT_PIXEL_SOLVERS,
                    cold_steps: int | None = None, seed: int = 0) -> dict[str, Method]:
    """``name -> method(ldct) -> (image, nfe)``: "fbp" (the LDCT itself), one pixel-DDPM entry per
    ``(solver, steps)`` or ``(solver, steps, options)`` in ``pixel_solvers`` (options go to
    ``medrecon.sample.sample``, e.g. ``{"eta": 1.0}`` for stochastic DDIM; noise from a generator
    seeded with ``seed``), and "latent-cold-diffusion" when ``autoencoder`` and ``cold`` are given."""
    methods: dict[str, Method] = {"fbp": lambda ld: (ld.clone(), 0)}
    if pixel is not None:
        for entry in pixel_solvers:
            solver, steps, opts = (tuple(entry) + ({},))[:3]

            def run(ld, solver=solver, steps=steps, opts=dict(opts)):
                g = torch.Generator(device=ld.device).manual_seed(seed)
                return sample_pixel_ddpm(pixel, ld, solver, steps, generator=g, **opts)
            name = f"pixel-ddpm {solver} {steps}" + "".join(f" {k}={v}" for k, v in sorted(opts.items()))
            methods[name] = run
    if (autoencoder is None) != (cold is None):
        raise ValueError("autoencoder, cold: pass both (latent cold diffusion needs E/D and the latent net) or neither")
    if cold is not None:
        methods["latent-cold-diffusion"] = lambda ld: reconstruct_cold(cold, autoencoder, ld, cold_steps)
    return methods


def evaluate_methods(test: CTPairDataset | tuple[torch.Tensor, torch.Tensor], methods: dict[str, Method],
                     warmup: bool = True) -> list[dict]:
    """One row per method: ``{"method", "rmse_hu", "psnr", "ssim", "s_per_slice", "nfe"}``."""
    nd, ld = test.tensors() if hasattr(test, "tensors") else test
    check_pair(nd, ld)
    rows = []
    for name, fn in methods.items():
        if warmup:
            fn(ld[:1])
        t0 = time.perf_counter()
        out, nfe = fn(ld)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        dt = time.perf_counter() - t0
        if out.shape != ld.shape or not torch.isfinite(out).all():
            raise ValueError(f"{name}: returned {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}), "
                             f"expected finite {tuple(ld.shape)}")
        rows.append({"method": name, **ct_metrics(nd, out), "s_per_slice": dt / ld.shape[0], "nfe": int(nfe)})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``evaluate_methods`` rows."""
    lines = ["| method | RMSE (HU, body) | PSNR (dB) | SSIM | s / slice | NFE |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['rmse_hu']:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['s_per_slice']:.4f} | {r['nfe']} |")
    return "\n".join(lines)


def run_tiny_benchmark(size: int = 32, n_train: int = 64, n_test: int = 8, *, i0: float = 1e4,
                       ae_steps: int = 300, cold_steps: int = 300, pixel_steps: int = 300,
                       batch_size: int = 16, T: int = 10, ae_preset: str = "tiny",
                       unet_preset: str = "tiny", pixel_solvers=DEFAULT_PIXEL_SOLVERS, seed: int = 0,
                       device: str = "cpu", progress: bool = False) -> dict:
    """Simulate, train the three networks, evaluate; returns config, training times, rows, ratios."""
    dev = torch.device(device)
    t0 = time.perf_counter()
    train = CTPairDataset(n_train, size, i0=i0, seed=seed)
    test = CTPairDataset(n_test, size, i0=i0, seed=seed + 10_000)
    sim_s = time.perf_counter() - t0
    ae = train_autoencoder(ae_preset, train, steps=ae_steps, batch_size=batch_size, seed=seed, device=dev,
                           progress=progress)
    cold = train_cold_diffusion(unet_preset, ae.autoencoder, train, T=T, steps=cold_steps,
                                batch_size=batch_size, seed=seed, device=dev, progress=progress)
    pixel = train_pixel_ddpm(unet_preset, train, steps=pixel_steps, batch_size=batch_size, seed=seed,
                             device=dev, progress=progress)
    nd, ld = test.tensors()
    methods = default_methods(pixel.model, ae.autoencoder, cold.model, pixel_solvers=pixel_solvers, seed=seed)
    rows = evaluate_methods((nd.to(dev), ld.to(dev)), methods)
    # the autoencoder's own reconstruction error bounds what any latent method can reach
    ceiling = ct_metrics(nd, decode(ae.autoencoder, encode(ae.autoencoder, nd.to(dev))).cpu())
    by = {r["method"]: r for r in rows}
    cold_t = by["latent-cold-diffusion"]["s_per_slice"]
    training = {
        "autoencoder_s": ae.seconds, "autoencoder_steps": ae_steps,
        "latent_net_s": cold.seconds, "latent_encode_s": cold.encode_seconds, "latent_net_steps": cold_steps,
        "pixel_ddpm_s": pixel.seconds, "pixel_ddpm_steps": pixel_steps,
        "pixel_s_per_step": pixel.seconds / pixel_steps, "latent_s_per_step": cold.seconds / cold_steps,
        "ae_s_per_step": ae.seconds / ae_steps,
        "final_loss": {"autoencoder": float(np.mean(ae.losses[-20:])), "latent_net": float(np.mean(cold.losses[-20:])),
                       "pixel_ddpm": float(np.mean(pixel.losses[-20:]))},
    }
    ratios = {
        "sampling_speedup_vs": {r["method"]: r["s_per_slice"] / cold_t for r in rows if r["method"].startswith("pixel")},
        "training_time_ratio_per_step_pixel_over_latent": training["pixel_s_per_step"] / training["latent_s_per_step"],
        "training_time_ratio_total_pixel_over_latent_plus_ae":
            pixel.seconds / (cold.seconds + cold.encode_seconds + ae.seconds),
    }
    return {"label": "tiny CPU run (toy scale; not the paper's setting)",
            "config": {"size": size, "n_train": n_train, "n_test": n_test, "i0": i0, "T": T,
                       "batch_size": batch_size, "ae_preset": ae_preset, "unet_preset": unet_preset,
                       "seed": seed, "device": str(dev), "torch_threads": torch.get_num_threads(),
                       "simulate_s": sim_s},
            "training": training, "rows": rows, "ratios": ratios,
            "autoencoder_ceiling_D_E_ndct": ceiling}


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m medrecon.ct.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--i0", type=float, default=1e4)
    p.add_argument("--ae-steps", type=int, default=300)
    p.add_argument("--cold-steps", type=int, default=300)
    p.add_argument("--pixel-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--ae-preset", default="tiny")
    p.add_argument("--unet-preset", default="tiny")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before anything runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the result dict here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run_tiny_benchmark(a.size, a.n_train, a.n_test, i0=a.i0, ae_steps=a.ae_steps, cold_steps=a.cold_steps,
                             pixel_steps=a.pixel_steps, batch_size=a.batch_size, T=a.T, seed=a.seed,
                             ae_preset=a.ae_preset, unet_preset=a.unet_preset,
                             device=a.device, progress=True)
    print(res["label"])
    print(format_table(res["rows"]))
    print(json.dumps({"training": res["training"], "ratios": res["ratios"],
                      "autoencoder_ceiling_D_E_ndct": res["autoencoder_ceiling_D_E_ndct"]}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
