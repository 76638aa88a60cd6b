"""DiffusionModel: complex <-> channel layout and the eps / x0 / v / score conversions, checked
against diffusers' DDPMScheduler (add_noise, get_velocity) with oracle networks that return the
true quantity."""
import pytest
import torch
from diffusers import DDPMScheduler

from medrecon.models.networks import build_unet
from medrecon.models.schedules import VE, VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel, from_channels, to_channels

B, H = 3, 8


class Oracle(torch.nn.Module):
    """Returns a fixed tensor (the 'true' prediction) and records what it was fed."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, []
        self.in_channels = out.shape[1]

    def forward(self, h, t):
        self.seen.append((h, t))
        return self.out


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, 2, H, H, generator=g)
    z = torch.randn(B, 2, H, H, generator=g)
    return x0, z


def _c(x):  # [B, 2, H, W] -> complex [B, H, W]
    return torch.view_as_complex(x.permute(0, 2, 3, 1).contiguous())


def test_channel_layout_round_trip():
    x = torch.randn(B, H, H, dtype=torch.complex64)
    h = to_channels(x, 2)
    assert h.shape == (B, 2, H, H)
    assert torch.equal(h[:, 0], x.real) and torch.equal(h[:, 1], x.imag)
    assert torch.equal(from_channels(h, x), x)
    with pytest.raises(ValueError, match="x"):
        to_channels(torch.randn(B, 3, H, H), 2)


@pytest.mark.parametrize("ptype", ["eps", "x0", "v", "score"])
def test_conversions_match_diffusers(ptype):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    sched = VPSchedule(make_betas("linear", 1000))
    torch.testing.assert_close(torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32), ref.alphas_cumprod)
    x0, z = _data()
    t = torch.tensor([0, 417, 999])
    xt = ref.add_noise(x0, z, t)
    v = ref.get_velocity(x0, z, t)
    abar = ref.alphas_cumprod[t].view(-1, 1, 1, 1)
    truth = {"eps": z, "x0": x0, "v": v, "score": -z}[ptype]
    net = Oracle(truth)
    model = DiffusionModel(net, sched, ptype)
    for rep in ("complex", "real"):
        x = _c(xt) if rep == "complex" else xt
        conv = _c if rep == "complex" else (lambda a: a)
        tol = dict(rtol=2e-4, atol=2e-4)
        torch.testing.assert_close(model.eps(x, t), conv(z), **tol)
        torch.testing.assert_close(model.x0(x, t), conv(x0), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(model.v(x, t), conv(v), **tol)
        torch.testing.assert_close(model.score(x, t), conv(-z / (1 - abar).sqrt()), rtol=2e-4, atol=2e-3)
        torch.testing.assert_close(model.eps_fn(x, t), conv(z), **tol)
    h, tn = net.seen[0]
    assert torch.equal(h, xt) and torch.equal(tn, t.float())  # real/imag channels, discrete t


def test_scalar_t_broadcasts_and_bad_t():
    sched = VPSchedule(make_betas("linear", 1000))
    x0, z = _data()
    model = DiffusionModel(Oracle(z), sched, "eps")
    model.eps(_c(x0), 10)
    assert torch.equal(model.net.seen[-1][1], torch.full((B,), 10.0))
    with pytest.raises(ValueError, match="t"):
        model.eps(_c(x0), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionModel(Oracle(z), sched, "noise")


def test_ve_score_model_conditions_on_sigma():
    ve = VE(sigma_min=0.01, sigma_max=50.0)
    x0, z = _data()
    t = torch.tensor([0.1, 0.5, 0.9])
    sigma = torch.as_tensor(ve.sigma(t), dtype=torch.float32).view(-1, 1, 1, 1)
    xt = x0 + sigma * z
    net = Oracle(-z)  # sigma * score = -z
    model = DiffusionModel(net, ve, "score")
    torch.testing.assert_close(model.score(xt, t), -z / sigma)
    torch.testing.assert_close(model.x0(xt, t), x0, rtol=1e-4, atol=1e-4)
    fed = net.seen[-1][1]
    torch.testing.assert_close(fed, 100.0 * (torch.log(sigma.flatten()) + 5.0))
    with pytest.raises(ValueError, match="VP"):
        DiffusionModel(net, ve, "v")


def test_with_real_unet_shapes_and_dtype():
    sched = VPSchedule(make_betas("linear", 1000))
    model = DiffusionModel(build_unet("tiny"), sched, "v")
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    for kind in ("eps", "x0", "v", "score"):
        y = model.predict(kind, x, torch.tensor([5.5, 900.0]))
        assert y.shape == x.shape and y.dtype == torch.complex64
