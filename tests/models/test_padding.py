"""``medrecon.models.padding``: the multiple a network needs, reflect padding / crop, the call
wrappers, and the too-small error (tiny 4-level U-Net: multiple 8)."""
import copy

import numpy as np
import pytest
import torch

from medrecon.models import padding
from medrecon.models.ddgan import DDGANConfig, build_ddgan
from medrecon.models.networks import UNetConfig, build_unet, preset
from medrecon.models.padding import PaddedNet, pad_to_multiple, padded, required_multiple
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel

pytestmark = pytest.mark.usefixtures("one_thread")

CFG8 = UNetConfig(channels=(8, 8, 8, 8), attention_levels=(False,) * 4, num_res_blocks=(1,) * 4,
                  norm_num_groups=4, num_head_channels=8)


@pytest.fixture(scope="module")
def model():
    net = build_unet(CFG8, seed=0)
    torch.nn.init.normal_(net.out[-1].conv.weight, std=0.1)  # MONAI zero-initialises the output
    return DiffusionModel(net, VPSchedule(make_betas("linear", 100)), "eps", network_config=CFG8).eval()


def test_required_multiple_from_configs_and_models(model):
    assert required_multiple(8) == 8
    assert required_multiple(preset("tiny")) == 2 and required_multiple(preset("brain128")) == 8
    assert required_multiple(model) == 8  # network_config
    assert required_multiple(model.net) == 8  # MONAI's block_out_channels
    bare = DiffusionModel(model.net, model.schedule, "eps")  # no config: found through .net
    assert required_multiple(bare) == 8
    G = build_ddgan(DDGANConfig(unet=CFG8, num_steps=2, z_dim=4, w_dim=8, d_channels=(8,)), seed=0)[0]
    assert required_multiple(G) == 8  # cfg.unet
    from medrecon.ct.autoencoder_net import ae_preset, build_autoencoder
    ae = build_autoencoder(ae_preset("tiny", channels=(8, 8, 8), num_res_blocks=(1, 1, 1),
                                     attention_levels=(False, False, False)), seed=0)
    assert required_multiple(ae) == 4  # AutoencoderKL: 2 ** (levels - 1)
    with torch.no_grad():
        assert ae.encode(torch.zeros(1, 1, 16, 24)).shape[-2:] == (4, 6)
    with pytest.raises(ValueError, match="cannot tell the size multiple of a Linear"):
        required_multiple(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=">= 1"):
        required_multiple(0)


@pytest.mark.parametrize("shape", [(30, 22), (27, 35), (3, 2, 17, 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_reflect_pad_and_crop(shape, dtype):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    xp, crop = pad_to_multiple(x, 8)
    H, W = shape[-2:]
    assert xp.shape == shape[:-2] + (-(-H // 8) * 8, -(-W // 8) * 8) and xp.dtype == dtype
    assert torch.equal(crop(xp), x)
    ph, pw = xp.shape[-2] - H, xp.shape[-1] - W
    width = [(0, 0)] * (len(shape) - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    ref = np.pad(x.numpy(), width, mode="reflect")  # numpy's reflect = torch's: edge not repeated
    assert np.array_equal(xp.numpy(), ref)


def test_fitting_image_is_passed_through_and_too_small_is_refused():
    x = torch.randn(2, 16, 24)
    xp, crop = pad_to_multiple(x, 8)
    assert xp is x and crop(x) is x
    with pytest.raises(ValueError, match=r"image size 6x20 .* minimum is 8x8"):
        pad_to_multiple(torch.zeros(6, 20), 8)
    with pytest.raises(ValueError, match=r"kspace: image size 16x7"):
        padded(lambda v: v, 8, what="kspace")(torch.zeros(16, 7))


def test_padded_network_runs_at_any_size_and_equals_it_where_it_fits(model):
    x = torch.randn(2, 27, 35, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # the bare U-Net: skip connections of unequal size
            model.eps(x, 10)
        f = padded(model.eps, model)
        e = f(x, 10)
        assert e.shape == x.shape and torch.isfinite(torch.view_as_real(e)).all()
        xp, crop = pad_to_multiple(x, 8)
        assert torch.equal(e, crop(model.eps(xp, 10)))
        y = torch.randn(2, 32, 40, dtype=torch.complex64)
        assert torch.equal(f(y, 10), model.eps(y, 10))  # a multiple already: unchanged


def test_padded_pads_condition_images_only_and_keeps_gradients():
    seen = []

    def fn(x, t, cond, z):
        seen.append((tuple(x.shape), tuple(t.shape), tuple(cond.shape), tuple(z.shape)))
        return x * cond

    x = torch.randn(1, 1, 10, 13, requires_grad=True)
    cond = torch.randn(1, 1, 10, 13)
    out = padded(fn, 4)(x, torch.zeros(1), cond, torch.zeros(10, 13))
    assert seen == [((1, 1, 12, 16), (1,), (1, 1, 12, 16), (10, 13))] and out.shape == x.shape
    out.sum().backward()  # DPS differentiates through the padded network
    assert torch.allclose(x.grad, cond)


def test_padded_net_stands_in_for_the_generator():
    cfg = DDGANConfig(unet=CFG8, num_steps=2, z_dim=4, w_dim=8, d_channels=(8,))
    G = build_ddgan(cfg, seed=0)[0].eval()
    P = PaddedNet(G)
    assert P.multiple == 8 and P.schedule is G.schedule and P.cfg is G.cfg
    z = P.sample_z(1, torch.Generator().manual_seed(0))
    x = torch.randn(1, 20, 30, dtype=torch.complex64)
    with torch.no_grad():
        assert P(x, 1, z).shape == x.shape
    Q = copy.deepcopy(P).requires_grad_(True)  # FDMR adapts a copy of the generator
    assert Q.inner is not G and len(list(Q.parameters())) == len(list(G.parameters()))
    Q(x, 1, z).abs().sum().backward()
    assert all(p.grad is not None for p in Q.parameters() if p.requires_grad and p.ndim > 1)
    assert padding.PAD_MODE == "reflect"
