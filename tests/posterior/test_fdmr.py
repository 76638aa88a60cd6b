"""FDMR sampler: data consistency, per-slice adaptation that leaves the prior untouched, the
ground-truth-free early stop, stage switches and NFE, bad input (tiny generator, 16x16)."""
import itertools

import pytest
import torch

import medrecon
from medrecon.models.ddgan import DDGANConfig, build_ddgan, save_ddgan
from medrecon.models.networks import UNetConfig
from medrecon.physics.fft import fft2c
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.fdmr import FDMROptions, adapt, fdmr, holdout_masks
from medrecon.registry import get_method

TINY = DDGANConfig(unet=UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1),
                                   norm_num_groups=4, num_head_channels=8),
                   num_steps=3, z_dim=8, w_dim=16, d_channels=(8,))
H = W = 16


@pytest.fixture(scope="module")
def G():
    g = build_ddgan(TINY, seed=0)[0]
    with torch.no_grad():  # MONAI zero-initialises output convs: give the untrained net an output
        for p in g.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    return g.eval().requires_grad_(False)


def _problem(coils=2, batch=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, H, W, dtype=torch.complex64, generator=gen)
    s = torch.randn(*batch, coils, H, W, dtype=torch.complex64, generator=gen)
    s = s / s.abs().pow(2).sum(-3, keepdim=True).sqrt()
    mask = torch.zeros(1, W)
    mask[0, ::3] = 1
    mask[0, 6:10] = 1
    return x, s, mask, MultiCoilMRI(s, mask).forward(x)


def _off(**kw):
    return FDMROptions(**{"generation": False, "adaptation": False, "refinement": False, "start": 0, **kw})


def test_data_consistency_is_exact_on_sampled_kspace(G):
    # single coil, unit map: A^+ is the k-space replacement, one CG step solves it exactly
    x, _, mask, _ = _problem()
    s = torch.ones(1, H, W, dtype=torch.complex64)
    y = MultiCoilMRI(s, mask).forward(x)
    out, nfe = fdmr(G, y, mask, s, torch.Generator().manual_seed(0), _off(generation=True))
    assert nfe == TINY.num_steps
    k = fft2c(out)[None] * mask
    assert torch.allclose(k, y, atol=1e-5)
    assert (fft2c(out) * (1 - mask)).abs().max() > 1e-3  # the unmeasured part comes from the generator
    # multi-coil, noise-free data: the CG projection drives the residual far below the data
    x, s, mask, y = _problem(coils=3)
    out, _ = fdmr(G, y, mask, s, torch.Generator().manual_seed(0), _off(generation=True, cg_iters=60))
    r = (MultiCoilMRI(s, mask).forward(out) - y).norm() / y.norm()
    assert r < 1e-3


@pytest.mark.parametrize("gen,ada,ref", list(itertools.product([False, True], repeat=3)))
def test_each_stage_switches_and_counts_nfe(G, gen, ada, ref):
    x, s, mask, y = _problem(batch=(2,))
    rec = {}
    opts = FDMROptions(generation=gen, adaptation=ada, refinement=ref, adapt_iters=2, patience=2, refine_from=2,
                       start=0, refine_prior="")  # METHODS.md's stage 1 (from T) and the generator's chain
    out, nfe = fdmr(G, y, mask, s, torch.Generator().manual_seed(0), opts, record=rec)
    assert out.shape == (2, H, W) and torch.isfinite(torch.view_as_real(out)).all()
    expect = (TINY.num_steps if gen else 0) + (2 if ref else 0)
    if ada:
        assert len(rec["adaptation"]) == 2  # one adaptation per slice
        expect += sum(info["nfe"] for info in rec["adaptation"])
    assert nfe == expect
    if gen and ada and ref:
        again, _ = fdmr(G, y, mask, s, torch.Generator().manual_seed(0), opts)
        assert torch.equal(out, again)  # explicit seed: reproducible


def test_adaptation_restores_the_weights(G):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    x, s, mask, y = _problem()
    rec = {}
    fdmr(G, y, mask, s, torch.Generator().manual_seed(0),
         FDMROptions(refinement=False, adapt_iters=5, patience=10, adapt_lr=1e-2), record=rec)
    assert rec["adaptation"][0]["nfe"] == 5  # it did take optimizer steps
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in G.parameters())


def test_adaptation_fits_consistent_data(G):
    _, s, mask, _ = _problem(seed=3)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    smooth = (torch.exp(-2 * (xx ** 2 + yy ** 2)) * torch.exp(1j * xx)).to(torch.complex64)
    y = MultiCoilMRI(s, mask).forward(smooth)
    x_in = torch.zeros(H, W, dtype=torch.complex64)
    _, info = adapt(G, x_in, torch.zeros(TINY.z_dim), y, s, mask.expand(H, W), torch.Generator().manual_seed(0),
                    iters=25, lr=1e-2, patience=25)
    r = info["residuals"]
    assert min(r[5:]) < 0.3 * r[0]  # the held-out residual falls when fit and held-out data agree


def test_early_stop_triggers_when_the_held_out_residual_rises(G):
    x, s, mask, _ = _problem(seed=4)
    m = mask.expand(H, W)
    _, hold = holdout_masks(m, 0.2, torch.Generator().manual_seed(7))
    A = MultiCoilMRI(s, torch.ones(1, W))
    # held-out samples are those of -x: fitting x on the fit set moves away from them
    y = (A.forward(x) * (m - hold) + A.forward(-x) * hold)
    x_in = torch.zeros(H, W, dtype=torch.complex64)
    out, info = adapt(G, x_in, torch.zeros(TINY.z_dim), y, s, m, torch.Generator().manual_seed(7),
                      iters=40, lr=1e-2, holdout=0.2, patience=3)
    r = info["residuals"]
    assert info["stopped_early"] and len(r) < 40
    assert r[-1] > r[info["best_iter"]]
    assert info["best_iter"] == len(r) - 1 - 3  # stopped `patience` iterations after the best
    assert out.shape == (H, W)


def test_holdout_split():
    m = torch.zeros(H, W)
    m[:, ::2] = 1
    m[:, 6:10] = 1  # fully sampled centre: never held out
    fit, hold = holdout_masks(m, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(fit + hold, m) and torch.equal(hold, hold[:1].expand(H, W))  # whole lines
    assert int(hold[0].sum()) == round(0.5 * 5) and not hold[0, 6:11].any()  # 5 lines outside 6..10
    pts = torch.zeros(H, W)
    pts[::2, ::3] = 1  # not a line mask: samples are held out
    fit, hold = holdout_masks(pts, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(fit + hold, pts) and int(hold.sum()) == round(0.25 * pts.sum().item())
    with pytest.raises(ValueError, match="holdout"):
        holdout_masks(m, 1.5, torch.Generator())


def test_registered_method_runs_through_reconstruct(tmp_path, G):
    spec = get_method("fdmr")
    assert spec.kind == "diffusion" and spec.needs_smaps
    run = tmp_path / "run"
    save_ddgan(run / "step-00000002", G, build_ddgan(TINY, seed=0)[1], step=2)
    x, s, mask, y = _problem(coils=2)
    res = medrecon.reconstruct(y, mask, "fdmr", smaps=s, seed=0, checkpoint=str(run), adapt_iters=3)
    assert res.image.shape == (H, W) and res.nfe > TINY.num_steps
    # stage 3 on a VP eps prior: CCDF-style DDIM steps from refine_t0 of a refine_steps grid
    from medrecon.models import DiffusionModel, VPSchedule, build_unet, make_betas, save_checkpoint
    cfg = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1), norm_num_groups=4,
                     num_head_channels=8)
    save_checkpoint(tmp_path / "vp", DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 100))),
                    cfg)
    opts = dict(checkpoint=str(run), adaptation=False, refine_prior=str(tmp_path / "vp"), refine_steps=20,
                refine_t0=0.1, start=0)
    res = medrecon.reconstruct(y, mask, "fdmr", smaps=s, seed=0, **opts)
    assert res.nfe == TINY.num_steps + 2 and torch.isfinite(res.image.abs()).all()
    res = medrecon.reconstruct(y, mask, "fdmr", smaps=s, seed=0, **{**opts, "start": 2})  # the default start
    assert res.nfe == 2 + 2
    with pytest.raises(ValueError, match="neither a DDGAN"):
        medrecon.reconstruct(y, mask, "fdmr", smaps=s, checkpoint=str(tmp_path))


def test_bad_input_errors(G):
    x, s, mask, y = _problem()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="complex"):
        fdmr(G, y.real, mask, s, g)
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fdmr(G, bad, mask, s, g)
    with pytest.raises(ValueError, match="init"):
        fdmr(G, y, mask, s, g, FDMROptions(init="magic"))
    with pytest.raises(ValueError, match="start"):
        fdmr(G, y, mask, s, g, FDMROptions(start=9))
    with pytest.raises(ValueError, match="smaps"):
        fdmr(G, y, mask, s[:1], g)
    with pytest.raises(ValueError, match="image size 1x16 is smaller"):  # 15x16 runs (padded)
        y1 = torch.zeros(2, 1, 16, dtype=torch.complex64)
        fdmr(G, y1, torch.ones(1, 16), torch.ones(2, 1, 16, dtype=torch.complex64), g)
    with pytest.raises(ValueError, match="generator"):
        fdmr(G, y, mask, s, 0)


def test_runs_on_the_shipped_generator_by_default():
    """No checkpoint option: FDMR loads the shipped ``brain128-ddgan`` (any image size: padded to the
    U-Net's multiple and cropped back) and gives a finite image."""
    x, s, mask, y = _problem(coils=2)
    res = medrecon.reconstruct(y, mask, "fdmr", smaps=s, seed=0, adapt_iters=2)
    assert res.image.shape == (H, W) and torch.isfinite(res.image.abs()).all()
    assert get_method("fdmr").prior == "brain128-ddgan"
