"""Denoising diffusion GAN: shapes, latent injection, R1, posterior q(x_{k-1}|x_k, x0), checkpoints,
training (tiny networks on 16x16 images)."""
import math

import pytest
import torch

from medrecon.models.ddgan import (DDGANConfig, DDGANSchedule, build_ddgan, d_loss, ddgan_sample, load_ddgan,
                                   load_generator, r1_penalty, save_ddgan)
from medrecon.models.ddgan_train import train_ddgan
from medrecon.models.networks import UNetConfig

TINY = DDGANConfig(unet=UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1),
                                   norm_num_groups=4, num_head_channels=8),
                   num_steps=4, z_dim=8, w_dim=16, d_channels=(8, 16))


def _cx(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_representations():
    G, D = build_ddgan(TINY, seed=0)
    x, z = _cx(3, 16, 16), torch.randn(3, TINY.z_dim)
    out = G(x, 2, z)
    assert out.shape == (3, 16, 16) and out.dtype == torch.complex64
    real = torch.view_as_real(x).permute(0, 3, 1, 2)
    assert torch.allclose(torch.view_as_real(out).permute(0, 3, 1, 2), G(real, 2, z), atol=1e-5)
    assert D(x, x, torch.tensor([1, 2, 4])).shape == (3,)
    with pytest.raises(ValueError, match="step indices"):
        G(x, 5, z)
    with pytest.raises(ValueError, match="z: expected"):
        G(x, 1, torch.randn(2, TINY.z_dim))


def _unzero(G):
    """MONAI zero-initialises the output and residual convolutions; give them weights."""
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    return G


def test_latent_changes_the_output_through_adagn():
    G = _unzero(build_ddgan(TINY, seed=0)[0])
    x = _cx(2, 16, 16)
    z1, z2 = torch.randn(2, TINY.z_dim), torch.randn(2, TINY.z_dim)
    with torch.no_grad():
        a, b, c = G(x, 3, z1), G(x, 3, z2), G(x, 3, z1)
    assert torch.equal(a, c)
    assert (a - b).abs().max() > 1e-4
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in G.unet.modules())
    assert n_gn == len(G._norms) > 0  # every GroupNorm of the MONAI UNet is wrapped by an AdaGN


def test_r1_penalty_equals_per_sample_autograd_reference():
    _, D = build_ddgan(TINY, seed=1)
    xp, xk = _cx(3, 16, 16, seed=1), _cx(3, 16, 16, seed=2)
    k = torch.tensor([1, 3, 4])
    logits, r1 = r1_penalty(D, xp, xk, k)
    ref = 0.0
    for i in range(3):
        h = torch.view_as_real(xp[i:i + 1]).permute(0, 3, 1, 2).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(h, xk[i:i + 1], k[i:i + 1]).sum(), h)
        ref += float(g.pow(2).sum()) / 3
    assert math.isclose(float(r1.detach()), ref, rel_tol=1e-4)
    assert torch.allclose(logits, D(xp, xk, k), atol=1e-5)
    # the D loss adds gamma / 2 * R1 to the non-saturating terms
    fake = _cx(3, 16, 16, seed=3)
    l0, _ = d_loss(D, xp, fake, xk, k, r1_gamma=0.0)
    l1, parts = d_loss(D, xp, fake, xk, k, r1_gamma=2.0)
    assert math.isclose(float((l1 - l0).detach()), float(r1.detach()), rel_tol=1e-4)
    assert math.isclose(parts["r1"], ref, rel_tol=1e-4)


def test_schedule_matches_the_vp_sde_and_the_posterior_the_bayes_formula():
    s = DDGANSchedule(4, 0.1, 20.0, 1e-3)
    t = 1e-3 + (1 - 1e-3) * torch.arange(1, 5, dtype=torch.float64) / 4
    assert torch.allclose(s.abar[1:], torch.exp(-0.5 * 19.9 * t ** 2 - 0.1 * t))
    assert s.abar[0] == 1
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for k in (2, 3, 4):
        ap, b = float(s.abar[k - 1]), float(s.betas[k - 1])
        x0, xk = 0.7, -0.4
        var = 1 / (1 / (1 - ap) + (1 - b) / b)  # product of q(x_{k-1}|x0) and q(x_k|x_{k-1})
        mean = var * (math.sqrt(ap) * x0 / (1 - ap) + math.sqrt(1 - b) * xk / b)
        draws = s.posterior_sample(torch.full((n, 1), xk), torch.full((n, 1), x0), k, g)
        assert abs(float(draws.mean()) - mean) < 5 * math.sqrt(var / n)
        assert abs(float(draws.var()) / var - 1) < 0.02
        cdraws = s.posterior_sample(torch.full((n, 1), complex(xk, 0.3)), torch.full((n, 1), complex(x0, 0.0)), k, g)
        assert abs(float(cdraws.real.mean()) - mean) < 5 * math.sqrt(var / n)
        assert abs(float((cdraws - cdraws.mean()).abs().pow(2).mean()) / var - 1) < 0.02  # CN: E|z|^2 = var
    one = s.posterior_sample(torch.full((4, 1), 0.3), torch.full((4, 1), 0.9), 1, g)
    assert torch.allclose(one, torch.full((4, 1), 0.9))  # k = 1: x_0 = x0 exactly
    # the forward pair has the right marginal: Var x_k = 1 - abar_k for x0 = 0
    prev, xk = s.q_pair(torch.zeros(n, 1), 3, g)
    assert abs(float(xk.var()) / (1 - float(s.abar[3])) - 1) < 0.02
    assert abs(float(prev.var()) / (1 - float(s.abar[2])) - 1) < 0.02


def test_sampler_applies_dc_and_counts_nfe():
    G, _ = build_ddgan(TINY, seed=0)
    g = torch.Generator().manual_seed(0)
    out, nfe = ddgan_sample(G, _cx(2, 16, 16), g, dc=lambda x0, k: torch.zeros_like(x0))
    assert nfe == 4 and torch.equal(out, torch.zeros(2, 16, 16, dtype=torch.complex64))
    _, nfe = ddgan_sample(G, _cx(2, 16, 16), g, start=2)
    assert nfe == 2
    with pytest.raises(ValueError, match="start"):
        ddgan_sample(G, _cx(2, 16, 16), g, start=5)


def test_checkpoint_round_trip(tmp_path):
    G, D = build_ddgan(TINY, seed=0)
    ema = {k: v + 1 for k, v in G.state_dict().items()}
    opt = torch.optim.Adam(G.parameters(), 1e-3)
    G(_cx(1, 16, 16), 2, torch.randn(1, TINY.z_dim)).abs().sum().backward()
    opt.step()
    path = save_ddgan(tmp_path / "ck", G, D, step=7, ema=ema, opt_g=opt, extra={"note": 1})
    ck = load_ddgan(path)
    assert ck.step == 7 and ck.config == TINY and ck.extra == {"note": 1}
    x, z = _cx(2, 16, 16), torch.randn(2, TINY.z_dim)
    with torch.no_grad():
        assert torch.equal(ck.generator(x, 3, z), G(x, 3, z))
        assert torch.equal(ck.discriminator(x, x, 2), D(x, x, 2))
    assert all(torch.equal(ck.ema[k], v) for k, v in ema.items())
    assert torch.equal(ck.opt_g["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    Ge = load_generator(path)
    assert torch.equal(next(iter(Ge.state_dict().values())), next(iter(ema.values())))
    with pytest.raises(FileExistsError):
        save_ddgan(path, G, D)
    save_ddgan(path, G, D, step=8, overwrite=True)
    assert load_ddgan(path).step == 8 and load_ddgan(path).ema is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"format": "medrecon-checkpoint", "version": 1}')
    with pytest.raises(ValueError, match="not a DDGAN checkpoint"):
        load_ddgan(tmp_path / "other")


def test_config_json_round_trip_and_validation():
    assert DDGANConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown keys"):
        DDGANConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="num_steps"):
        DDGANConfig(num_steps=0)


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    img = torch.zeros(16, 16, dtype=torch.complex64)
    img[4:12, 5:11] = 0.8 + 0.3j  # a trivial (one-point) distribution
    data = [img] * 8
    r = train_ddgan(TINY, data, tmp_path / "a", steps=40, batch_size=4, lr_g=2e-3, lambda_rec=1.0,
                    lazy_reg=2, progress=False, seed=0)
    l1 = [rec["l1_x0"] for rec in r.log]
    assert sum(l1[-5:]) / 5 < 0.5 * sum(l1[:5]) / 5
    assert r.checkpoint is not None and load_ddgan(r.checkpoint).step == 40
    # resume: 3 then 5 steps equals 5 steps straight
    a = train_ddgan(TINY, data, tmp_path / "b", steps=5, batch_size=2, progress=False, seed=1)
    train_ddgan(TINY, data, tmp_path / "c", steps=3, batch_size=2, progress=False, seed=1)
    c = train_ddgan(TINY, data, tmp_path / "c", steps=5, batch_size=2, progress=False, seed=1)
    assert c.step == 5 and [x["d_loss"] for x in c.log] == [x["d_loss"] for x in a.log[3:]]
    sa, sc = a.generator.state_dict(), c.generator.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(FileExistsError):
        train_ddgan(TINY, data, tmp_path / "c", steps=5, resume=False, progress=False)


def test_recipe_trains_from_the_cli_and_rejects_bad_options(tmp_path, capsys):
    import numpy as np

    from medrecon.cli.main import main
    from medrecon.models.train_common import latest_checkpoint

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.standard_normal((2, 40, 32)) + 1j * rng.standard_normal((2, 40, 32)))
            .astype(np.complex64))
    args = ["train", "--recipe", "ddgan", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"),
            "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--quiet", "--recipe-option", "size=32"]
    assert main(args) == 0
    ck = load_ddgan(latest_checkpoint(tmp_path / "run"))
    assert ck.step == 2 and ck.config.num_steps == 4 and ck.extra["recipe"] == "ddgan"
    assert main(args + ["--recipe-option", "T=12"]) == 2
    assert main(args + ["--recipe-option", "bogus=1"]) == 2
    assert "T" in capsys.readouterr().err
