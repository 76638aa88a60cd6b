"""Latent cold diffusion and the pixel-space conditional DDPM baseline for low-dose CT (medrecon.ct).

Tiny sizes throughout (32x32 images, 2 latent channels, T = 5..10 cold steps)."""
from __future__ import annotations

import json

import pytest
import torch

import medrecon.ct as C
from medrecon.models import DiffusionModel, VPSchedule, build_unet, make_betas, preset, save_checkpoint

pytest.importorskip("monai")


@pytest.fixture(scope="module")
def pairs():
    return C.CTPairDataset(4, 32, seed=3, slices_per_volume=4)


@pytest.fixture(scope="module")
def ae(pairs):
    return C.train_autoencoder("tiny", pairs, steps=3, batch_size=2, seed=0).autoencoder


def _perturb(net, seed=0):
    """MONAI zero-initialises the U-Net's output conv; perturb all weights so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def _z(shape=(3, 2, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ------------------------------------------------------------------------------------- data
def test_pairs_normalisation_and_shapes(pairs):
    nd, ld = pairs.tensors()
    assert nd.shape == ld.shape == (4, 1, 32, 32) and nd.dtype == torch.float32
    assert len(pairs) == 4 and pairs[1][0].shape == (1, 32, 32)
    hu = C.to_hu(nd)
    # FBP of the noise-free sinogram: air ~ -1000 HU outside, tissue near 0..100 HU inside
    mask = C.body_mask(hu)
    assert 0.1 < mask.float().mean() < 0.95
    assert abs(float(hu[~mask].median()) + 1000) < 100
    noise = float((C.to_hu(ld) - hu)[mask].pow(2).mean().sqrt())
    assert 5 < noise < 500  # low dose adds noise of tens of HU, not nothing and not garbage
    img = C.simulate_pairs(2, 32, seed=3, slices_per_volume=4, target="image")
    assert torch.allclose(C.to_hu(img["ndct"][:, 0]), img["image_hu"], atol=1e-3)
    assert torch.allclose(C.from_hu(C.to_hu(nd)), nd, atol=1e-6)


def test_pairs_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        C.CTPairDataset(ndct=torch.zeros(2, 1, 32, 32), ldct=torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        C.CTPairDataset(ndct=torch.full((1, 1, 16, 16), float("nan")), ldct=torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="target"):
        C.simulate_pairs(1, 32, target="phantom")
    with pytest.raises(ValueError, match="size"):
        C.simulate_pairs(1, 30)


# ------------------------------------------------------------------------ cold degradation
@pytest.mark.parametrize("kind", C.COLD_SCHEDULES)
def test_degradation_endpoints(kind):
    s = C.ColdSchedule(7, kind)
    z0, zl = _z()
    assert torch.equal(C.degrade(z0, zl, 0, s), z0)  # t = 0: identity
    assert torch.equal(C.degrade(z0, zl, 7, s), zl)  # t = T: the encoded LDCT
    mid = C.degrade(z0, zl, 3, s)
    a = float(s.abar[3])
    assert torch.allclose(mid, a ** 0.5 * z0 + (1 - a) ** 0.5 * zl, atol=1e-6)
    per = C.degrade(z0, zl, torch.tensor([0, 3, 7]), s)  # per-sample times
    assert torch.equal(per[0], z0[0]) and torch.equal(per[2], zl[2]) and torch.allclose(per[1], mid[1])
    assert bool((s.abar[1:] <= s.abar[:-1]).all())


def test_degradation_in_latent_of_autoencoder(ae, pairs):
    nd, ld = pairs.tensors()
    z0, zT = C.encode(ae, nd), C.encode(ae, ld)
    s = C.ColdSchedule(5)
    assert torch.equal(C.degrade(z0, zT, 5, s), C.encode(ae, ld))
    assert torch.equal(C.degrade(z0, zT, 0, s), z0)


def test_schedule_and_time_errors():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="T"):
            C.ColdSchedule(bad)
    with pytest.raises(ValueError, match="kind"):
        C.ColdSchedule(5, "sqrt")
    with pytest.raises(ValueError, match="abar_T = 0"):
        C.ColdSchedule(abar=[1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match="non-increasing"):
        C.ColdSchedule(abar=[1.0, 0.2, 0.5, 0.0])
    s = C.ColdSchedule(5)
    z0, zl = _z()
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        C.degrade(z0, zl, 6, s)
    with pytest.raises(ValueError, match="integers"):
        C.degrade(z0, zl, 2.5, s)
    with pytest.raises(ValueError, match="shapes differ"):
        C.degrade(z0, zl[:2], 1, s)
    with pytest.raises(ValueError, match="T"):
        C.build_cold_model("tiny", 2, T=0)
    with pytest.raises(ValueError, match="steps"):
        C.cold_timesteps(5, 6)
    t = C.ColdSchedule.from_dict(C.ColdSchedule(4, "linear").to_dict())
    assert torch.equal(t.abar, C.ColdSchedule(4, "linear").abar)


# --------------------------------------------------------------------- cold sampler (Alg. 2)
@pytest.mark.parametrize("kind,T,steps", [("cosine", 10, None), ("linear", 10, None), ("cosine", 10, 3),
                                          ("linear", 5, 1)])
def test_cold_sampler_with_oracle_recovers_z0_exactly(kind, T, steps):
    s = C.ColdSchedule(T, kind)
    z0, zT = _z(seed=1)
    seen = []

    def oracle(z, t):
        seen.append(t.clone())
        assert t.dtype == torch.long and t.shape == (z.shape[0],)
        # the iterate is exactly on the degradation path of the true z0
        assert torch.allclose(z, C.degrade(z0, zT, int(t[0]), s), atol=1e-6)
        return z0.clone()

    out, nfe = C.cold_sample(oracle, zT, s, steps)
    assert torch.allclose(out, z0, atol=1e-6, rtol=0)
    assert nfe == (steps or T) == len(seen)
    assert [int(t[0]) for t in seen] == C.cold_timesteps(T, steps)[:-1]
    out1, _ = C.cold_sample(oracle, zT, s, steps, algorithm="naive")
    assert torch.allclose(out1, z0, atol=1e-6)


def test_cold_sampler_is_weighted_average_of_predictions():
    # Algorithm 2 telescopes: z_0 = sum_t (sqrt(abar_{t-1}) - sqrt(abar_t)) z0_hat_t (weights sum to 1,
    # the z_T terms cancel since sqrt(1 - abar) goes from 1 to 0); a constant predictor c gives c.
    s = C.ColdSchedule(8)
    z0, zT = _z(seed=2)
    preds = {t: torch.randn(z0.shape, generator=torch.Generator().manual_seed(t)) for t in range(1, 9)}
    out, nfe = C.cold_sample(lambda z, t: preds[int(t[0])], zT, s)
    a = s.abar.sqrt()
    expected = sum(float(a[t - 1] - a[t]) * preds[t] for t in range(1, 9))
    assert nfe == 8 and torch.allclose(out, expected, atol=1e-5)
    c = torch.randn_like(z0)
    assert torch.allclose(C.cold_sample(lambda z, t: c, zT, s)[0], c, atol=1e-5)
    # Algorithm 1 returns D(z0_hat_1, 0) = the last prediction
    assert torch.equal(C.cold_sample(lambda z, t: preds[int(t[0])], zT, s, algorithm="naive")[0], preds[1])
    with pytest.raises(ValueError, match="algorithm"):
        C.cold_sample(lambda z, t: c, zT, s, algorithm="fast")
    with pytest.raises(ValueError, match="shape"):
        C.cold_sample(lambda z, t: c[:1], zT, s)


# --------------------------------------------------------------------------- overfit checks
def test_autoencoder_overfits_fixed_batch(pairs):
    x = pairs.ndct[:2]
    ae0 = C.build_autoencoder("tiny", seed=1)
    with torch.no_grad():
        before = float(C.ae_loss(ae0, x, 1e-6, torch.Generator().manual_seed(0)))
    res = C.train_autoencoder(ae0, x, steps=15, batch_size=2, lr=3e-3, scale_latents=False, seed=0)
    with torch.no_grad():
        after = float(C.ae_loss(res.autoencoder, x, 1e-6, torch.Generator().manual_seed(0)))
    assert after < 0.7 * before, (before, after)
    assert not any(p.requires_grad for p in res.autoencoder.parameters())  # frozen afterwards
    assert len(res.losses) == 15


def test_cold_latent_net_overfits_fixed_batch(ae, pairs):
    nd, ld = pairs.ndct[:2], pairs.ldct[:2]
    z0, zT = C.encode(ae, nd), C.encode(ae, ld)
    m = C.build_cold_model("tiny", ae.latent_channels, T=5, seed=0)

    def loss():
        with torch.no_grad():
            return float(C.cold_loss(m, z0, zT, torch.Generator().manual_seed(0)))

    before = loss()
    C.train_cold_diffusion(m, ae, (nd, ld), steps=15, batch_size=2, lr=2e-3, seed=0)
    after = loss()
    assert after < 0.7 * before, (before, after)
    img, nfe = C.reconstruct_cold(m, ae, ld)
    assert img.shape == ld.shape and nfe == 5 and torch.isfinite(img).all()


def test_pixel_ddpm_overfits_fixed_batch(pairs):
    nd, ld = pairs.ndct[:2], pairs.ldct[:2]
    m = C.build_pixel_ddpm("tiny", seed=0)

    def loss():
        with torch.no_grad():
            return float(C.ddpm_loss(m, nd, ld, torch.Generator().manual_seed(0)))

    before = loss()
    C.train_pixel_ddpm(m, (nd, ld), steps=15, batch_size=2, lr=2e-3, seed=0)
    after = loss()
    assert after < 0.7 * before, (before, after)


# --------------------------------------------------------------- pixel DDPM via medrecon.sample
@pytest.mark.parametrize("solver,steps", [("ddim", 4), ("dpm-solver++", 4), ("ddpm", 3)])
def test_pixel_ddpm_samples_through_medrecon_sample(solver, steps):
    m = C.build_pixel_ddpm("tiny", seed=0)
    ld = torch.randn(2, 1, 16, 16)
    out, nfe = C.sample_pixel_ddpm(m, ld, solver, steps, generator=torch.Generator().manual_seed(0))
    assert out.shape == ld.shape and out.device == ld.device and out.dtype == ld.dtype
    assert torch.isfinite(out).all() and nfe == steps
    again, _ = C.sample_pixel_ddpm(m, ld, solver, steps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # randomness only through the generator


def test_conditional_eps_fn_concatenates_ldct():
    m = C.build_pixel_ddpm("tiny", seed=0)
    _perturb(m.net)
    x, ld = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    eps = C.conditional_eps_fn(m, ld)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = m.net(torch.cat([x, ld], 1), t.float())
    assert torch.equal(eps(x, t), ref) and eps.nfe == 1
    assert not torch.equal(eps(x, t), C.conditional_eps_fn(m, ld + 1)(x, t))
    with pytest.raises(ValueError, match="LDCT shape"):
        m(x, t, ld[:, :, :8])
    with pytest.raises(ValueError, match="ldct"):
        C.sample_pixel_ddpm(m, ld[:, 0], "ddim", 2)
    with pytest.raises(ValueError, match="in_channels = 2"):
        C.build_pixel_ddpm(preset("tiny", in_channels=1, out_channels=1))


@pytest.mark.slow
def test_pixel_ddpm_1000_step_ddpm_and_ddim():
    m = C.build_pixel_ddpm("tiny", seed=0)
    ld = torch.randn(1, 1, 16, 16)
    for solver in ("ddpm", "ddim"):
        out, nfe = C.sample_pixel_ddpm(m, ld, solver, 1000, generator=torch.Generator().manual_seed(0))
        assert nfe == 1000 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ checkpoints
def test_autoencoder_checkpoint_round_trip_and_errors(ae, pairs, tmp_path):
    path = C.save_autoencoder(tmp_path / "ae", ae, step=3)
    back = C.load_autoencoder(path)
    assert back.config == ae.config and back.scale_factor == ae.scale_factor
    for k, v in ae.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[k], v), k
    assert torch.equal(C.encode(back, pairs.ndct), C.encode(ae, pairs.ndct))
    with pytest.raises(FileExistsError):
        C.save_autoencoder(path, ae)
    C.save_autoencoder(path, ae, overwrite=True)
    # a config that does not match the weights
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["network"]["config"]["latent_channels"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        C.load_autoencoder(path)
    cfg["config"]["network"]["config"]["bogus"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown keys"):
        C.load_autoencoder(path)
    cfg["version"] = 99
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version"):
        C.load_autoencoder(path)
    with pytest.raises(FileNotFoundError):
        C.load_autoencoder(tmp_path / "nothing")


def test_cold_checkpoint_round_trip_and_errors(ae, tmp_path):
    m = C.build_cold_model("tiny", ae.latent_channels, T=6, schedule="linear", seed=4)
    _perturb(m.net)
    ema = {k: v + 1 for k, v in m.net.state_dict().items()}
    path = C.save_cold_diffusion(tmp_path / "cold", m, ema=ema, step=7)
    back = C.load_cold_diffusion(path, use_ema=False)
    assert back.network_config == m.network_config and torch.equal(back.schedule.abar, m.schedule.abar)
    assert back.T == 6 and back.schedule.kind == "linear"
    for k, v in m.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[k], v), k
    with_ema = C.load_cold_diffusion(path)
    k0 = next(iter(ema))
    assert torch.equal(with_ema.net.state_dict()[k0], ema[k0])
    z = torch.randn(1, ae.latent_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(z, 3), m(z, 3))
    with pytest.raises(ValueError, match="expected a 'ct-autoencoder-kl'"):
        C.load_autoencoder(path)  # wrong kind of checkpoint
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["network"]["config"]["channels"] = [16, 48]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape"):
        C.load_cold_diffusion(path)


def test_pixel_checkpoint_round_trip_and_errors(tmp_path):
    m = C.build_pixel_ddpm("tiny", betas=make_betas("linear", 100), seed=2)
    _perturb(m.net)
    path = C.save_pixel_ddpm(tmp_path / "pix", m, step=5)
    back = C.load_pixel_ddpm(path)
    assert torch.equal(back.betas, m.betas) and back.network_config == m.network_config
    for k, v in m.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[k], v), k
    ld = torch.randn(1, 1, 16, 16)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(C.sample_pixel_ddpm(m, ld, "ddim", 3, g())[0], C.sample_pixel_ddpm(back, ld, "ddim", 3, g())[0])
    # an unconditional prior checkpoint is refused
    cfg = preset("tiny", in_channels=1, out_channels=1)
    plain = save_checkpoint(tmp_path / "plain", DiffusionModel(build_unet(cfg), VPSchedule(make_betas()), "eps"), cfg)
    with pytest.raises(ValueError, match="ct-pixel-ddpm"):
        C.load_pixel_ddpm(plain)


# ---------------------------------------------------------------------------- bad inputs
def test_training_bad_inputs(ae):
    nd = torch.zeros(2, 1, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        C.train_cold_diffusion("tiny", ae, (nd, torch.zeros(2, 1, 16, 16)), steps=1)
    with pytest.raises(ValueError, match="shapes differ"):
        C.train_pixel_ddpm("tiny", (nd, torch.zeros(3, 1, 32, 32)), steps=1)
    with pytest.raises(ValueError, match="steps"):
        C.train_pixel_ddpm("tiny", (nd, nd), steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        C.train_autoencoder("tiny", nd, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="multiples of 2"):
        C.encode(ae, torch.zeros(1, 1, 31, 31))
    with pytest.raises(ValueError, match="latent"):
        C.decode(ae, torch.zeros(1, ae.latent_channels + 1, 8, 8))
    with pytest.raises(ValueError, match=r"t in \[1, 5\]"):
        C.build_cold_model("tiny", 2, T=5)(torch.zeros(1, 2, 8, 8), 0)
    with pytest.raises(ValueError, match="latent_channels"):
        C.build_cold_model("tiny")
    with pytest.raises(ValueError, match="ldct"):
        C.reconstruct_cold(C.build_cold_model("tiny", 2, T=5), ae, torch.zeros(1, 32, 32))
