"""medrecon.ct.evaluate: CT metrics and the method comparison on simulated slices (tiny sizes)."""
from __future__ import annotations

import math

import pytest
import torch

import medrecon.ct as C
from medrecon.ct.evaluate import (WINDOW_HU, ct_metrics, default_methods, evaluate_methods, format_table,
                                  run_tiny_benchmark)

pytest.importorskip("monai")


def _phantom(s=2, n=16):
    hu = torch.full((s, 1, n, n), -1000.0)
    hu[..., 4:12, 4:12] = 40.0
    hu[..., 6:8, 6:8] = 800.0
    return C.from_hu(hu)


def test_ct_metrics_exact_values():
    gt = _phantom()
    m = ct_metrics(gt, gt.clone())
    assert m["rmse_hu"] == 0 and m["ssim"] == pytest.approx(1.0)
    assert m["psnr"] is None and "infinite" in m["reason"]  # JSON records hold no Infinity
    off = ct_metrics(gt, gt + C.from_hu(torch.tensor(10.0)))  # +10 HU everywhere, inside the window
    assert off["rmse_hu"] == pytest.approx(10.0, rel=1e-5)
    span = WINDOW_HU[1] - WINDOW_HU[0]
    assert off["psnr"] == pytest.approx(10 * math.log10(span ** 2 / 100.0), rel=1e-5)
    # only body pixels count for the RMSE: an error in the air does not change it
    air = gt.clone()
    air[..., 0, 0] += 0.5
    assert ct_metrics(gt, air)["rmse_hu"] == 0 and ct_metrics(gt, air)["psnr"] < math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        ct_metrics(gt, gt[:1])
    with pytest.raises(ValueError, match="body"):
        ct_metrics(torch.full((1, 1, 8, 8), -1.0), torch.full((1, 1, 8, 8), -1.0))


def test_evaluate_methods_rows():
    gt = _phantom()
    ld = gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    pixel = C.build_pixel_ddpm("tiny", seed=0)
    ae = C.build_autoencoder("tiny", seed=0)
    cold = C.build_cold_model("tiny", ae.latent_channels, T=4, seed=0)
    methods = default_methods(pixel, ae, cold, pixel_solvers=(("ddim", 3), ("dpm-solver++", 2),
                                                               ("ddim", 2, {"eta": 1.0})))
    assert list(methods) == ["fbp", "pixel-ddpm ddim 3", "pixel-ddpm dpm-solver++ 2", "pixel-ddpm ddim 2 eta=1.0",
                             "latent-cold-diffusion"]
    rows = evaluate_methods((gt, ld), methods, warmup=False)
    by = {r["method"]: r for r in rows}
    assert by["fbp"]["nfe"] == 0 and by["fbp"]["rmse_hu"] == pytest.approx(ct_metrics(gt, ld)["rmse_hu"])
    assert by["pixel-ddpm ddim 3"]["nfe"] == 3 and by["latent-cold-diffusion"]["nfe"] == 4
    assert all(r["s_per_slice"] >= 0 and math.isfinite(r["rmse_hu"]) for r in rows)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "latent-cold-diffusion" in table
    with pytest.raises(ValueError, match="both"):
        default_methods(pixel, ae, None)
    with pytest.raises(ValueError, match="expected finite"):
        evaluate_methods((gt, ld), {"bad": lambda x: (x[:, :, :8], 0)}, warmup=False)


@pytest.mark.slow
def test_run_tiny_benchmark_smoke():
    res = run_tiny_benchmark(32, 4, 2, ae_steps=2, cold_steps=2, pixel_steps=2, batch_size=2, T=3,
                             pixel_solvers=(("ddim", 2),))
    assert {r["method"] for r in res["rows"]} == {"fbp", "pixel-ddpm ddim 2", "latent-cold-diffusion"}
    assert "pixel-ddpm ddim 2" in res["ratios"]["sampling_speedup_vs"]
    assert res["training"]["pixel_ddpm_steps"] == 2
