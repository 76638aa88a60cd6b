"""`medrecon bench ct` (medrecon.bench.ct) on tiny checkpoints: table, JSON, figures, ratios."""
import json

import pytest
import torch

from medrecon.cli.main import build_parser
from medrecon.ct import (save_autoencoder, save_cold_diffusion, save_pixel_ddpm, simulate_pairs,
                         train_autoencoder, train_cold_diffusion, train_pixel_ddpm)
from medrecon.bench.commands.ct import main
from medrecon.bench.ct import parse_solver
from medrecon.ct.evaluate import ct_metrics
from medrecon.ct.pixel_ddpm import build_pixel_ddpm, sample_pixel_ddpm

N = 16


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    p = simulate_pairs(4, N, seed=0, i0=5e3)
    data = (p["ndct"], p["ldct"])
    rec = {"data": {"size": N, "i0": 5e3, "sigma_e": 5.0}, "batch_size": 2}
    ae = train_autoencoder("tiny", data, steps=2, batch_size=2)
    save_autoencoder(d / "cold" / "autoencoder", ae.autoencoder,
                     extra={**rec, "train_seconds": ae.seconds, "steps": 2})
    cold = train_cold_diffusion("tiny", ae.autoencoder, data, T=3, steps=2, batch_size=2)
    save_cold_diffusion(d / "cold" / "latent", cold.model,
                        extra={**rec, "train_seconds": cold.seconds, "steps": 2,
                               "encode_seconds": cold.encode_seconds})
    pix = train_pixel_ddpm("tiny", data, steps=2, batch_size=2)
    save_pixel_ddpm(d / "pixel", pix.model, extra={**rec, "train_seconds": pix.seconds, "steps": 2})
    return d


def test_bench_ct_outputs(checkpoints, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "ct", "--pixel", checkpoints / "pixel", "--latent", checkpoints / "cold",
            "--out", out, "--n-test", "2", "--pixel-solvers", "ddim:3", "dpm-solver++:2:clip_x0=2",
            "--train-steps", "1", "--quiet", "--figure-slices", "1"]
    args = build_parser().parse_args([str(a) for a in argv])
    assert args.func(args) == 0
    res = json.loads((out / "bench_ct.json").read_text())
    names = [r["method"] for r in res["rows"]]
    assert names[0] == "FBP (LDCT)" and names[-1].startswith("latent cold diffusion T=3")
    assert "pixel DDPM ddim 3" in names and "pixel DDPM dpm-solver++ 2 clip_x0=2" in names
    assert [r["nfe"] for r in res["rows"]] == [0, 3, 2, 3]
    # the FBP row is the held-out test set (seeds >= 1000) scored independently
    p = simulate_pairs(2, N, seed=1, i0=5e3)
    want = ct_metrics(p["ndct"], p["ldct"])
    assert res["rows"][0]["rmse_hu"] == pytest.approx(want["rmse_hu"], rel=1e-6)
    assert res["config"]["test_seed"] == 1 and res["config"]["size"] == N
    sp = res["sampling_speedup_vs_pixel"]
    assert set(sp) == {"pixel DDPM ddim 3", "pixel DDPM dpm-solver++ 2 clip_x0=2"} and all(v > 0 for v in sp.values())
    t = res["training"]
    assert t["ratio_pixel_over_latent_total"] > 0 and t["measured_ratio_pixel_over_latent_total"] > 0
    md = (out / "bench_ct.md").read_text()
    assert "| FBP (LDCT) |" in md and "training-time ratio" in md
    for f in ("bench_ct_grid.png", "bench_ct_speed.png"):
        assert (out / f).stat().st_size > 1000
    with pytest.raises(FileExistsError):
        args.func(args)


def test_bench_errors(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="solver:steps"):
        parse_solver("ddim")
    with pytest.raises(ValueError, match="one of"):
        parse_solver("nope:3")
    assert parse_solver("ddim:50:eta=1:clip_x0=2") == ("ddim", 50, {"eta": 1.0, "clip_x0": 2.0})
    args = build_parser().parse_args(["bench", "ct", "--pixel", str(checkpoints / "pixel"), "--latent",
                                      str(checkpoints / "cold"), "--out", str(tmp_path), "--test-seed", "0"])
    with pytest.raises(ValueError, match="test-seed"):
        main(args)


class _ScaledEps(torch.nn.Module):
    """An eps 'network' eps = k x_t: for k < 1 its x0 estimates (1 - k sigma) x / alpha blow up
    at large t and the deterministic solvers carry them to the end."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, t):
        return self.k * x[:, :1]


def test_clip_x0_bounds_deterministic_solvers_and_is_identity_when_inactive():
    m = build_pixel_ddpm("tiny", seed=0)
    ld = torch.zeros(2, 1, 8, 8)
    for solver, steps in (("ddim", 10), ("dpm-solver++", 5)):
        m.net = _ScaledEps(0.5)
        g = torch.Generator().manual_seed(0)
        free, _ = sample_pixel_ddpm(m, ld, solver, steps, generator=g)
        g = torch.Generator().manual_seed(0)
        clipped, _ = sample_pixel_ddpm(m, ld, solver, steps, generator=g, clip_x0=2.0)
        assert float(free.abs().max()) > 10  # diverged
        assert float(clipped.abs().max()) <= 2.0 + 1e-5
        # a bound never reached changes nothing
        m.net = _ScaledEps(1.0)
        g = torch.Generator().manual_seed(0)
        a, _ = sample_pixel_ddpm(m, ld + 0.1, solver, steps, generator=g)
        g = torch.Generator().manual_seed(0)
        b, _ = sample_pixel_ddpm(m, ld + 0.1, solver, steps, generator=g, clip_x0=1e6)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # eps recomputed: rounding only
    with pytest.raises(ValueError, match="clip_x0"):
        sample_pixel_ddpm(m, ld, "ddim", 2, clip_x0=0.0)


def test_ldct_above_replaces_high_noise_steps_by_the_condition():
    m = build_pixel_ddpm("tiny", seed=0)
    m.net = _ScaledEps(0.5)  # a badly biased eps
    ld = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    # x0 = LDCT at every step: DDIM eta=0 ends exactly at the LDCT, with no network call
    out, nfe = sample_pixel_ddpm(m, ld, "ddim", 10, generator=g, ldct_above=0)
    torch.testing.assert_close(out, ld, atol=1e-5, rtol=0)
    assert nfe == 0
    # above every timestep: nothing changes; in between: only the low-noise steps call the net
    g = torch.Generator().manual_seed(0)
    free, nfe_free = sample_pixel_ddpm(m, ld, "ddim", 10, generator=g)
    g = torch.Generator().manual_seed(0)
    same, _ = sample_pixel_ddpm(m, ld, "ddim", 10, generator=g, ldct_above=1000)
    torch.testing.assert_close(free, same, atol=0, rtol=0)
    g = torch.Generator().manual_seed(0)
    _, nfe_half = sample_pixel_ddpm(m, ld, "ddim", 10, generator=g, ldct_above=500)
    assert nfe_free == 10 and nfe_half == 5  # leading spacing: t = 900, ..., 0
    with pytest.raises(ValueError, match="ldct_above"):
        sample_pixel_ddpm(m, ld, "ddim", 2, ldct_above=-1)
