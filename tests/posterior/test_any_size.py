"""Every network method runs on images whose size is not a multiple of its U-Net's stride (issue 14
item 6; a 484 x 484 DICOM failed with "Expected size 122 but got size 121"): the network call is
reflect-padded and cropped (``medrecon.models.padding``).  Tiny 4-level networks (multiple 8),
2 steps, sizes 30 x 22 (even) and 27 x 35 (odd), none a multiple of 8."""
import math

import pytest
import torch

import medrecon
from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.checkpoint import save_checkpoint
from medrecon.models.ddgan import DDGANConfig, build_ddgan, save_ddgan
from medrecon.models.hfs_process import HFSSDE
from medrecon.models.networks import UNetConfig, build_unet
from medrecon.models.schedules import VE, VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel
from medrecon.physics.fft import fft2c

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = UNetConfig(channels=(8, 8, 8, 8), attention_levels=(False,) * 4, num_res_blocks=(1,) * 4,
                 norm_num_groups=4, num_head_channels=8)
SIZES = [(30, 22), (27, 35)]
VP_METHODS = ["dds", "ddnm", "diffpir", "dps", "ccdf", "score-mri", "spirit-diffusion"]


def _net(seed):
    net = build_unet(CFG, seed=seed)
    torch.nn.init.normal_(net.out[-1].conv.weight, std=0.05)  # MONAI zero-initialises the output
    return net


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("any_size")
    vp = DiffusionModel(_net(0), VPSchedule(make_betas("linear", 100)), "eps", network_config=CFG)
    save_checkpoint(d / "vp", vp, CFG)
    ve = DiffusionModel(_net(1), VE(0.01, 5.0), "score", network_config=CFG)
    save_checkpoint(d / "hfs", ve, {"network": CFG, "hfs": HFSSDE(4).to_dict()})
    G, D = build_ddgan(DDGANConfig(unet=CFG, num_steps=2, z_dim=4, w_dim=8, d_channels=(8,)), seed=0)
    save_ddgan(d / "ddgan" / "step-00000001", G, D, step=1)
    return d


def _data(H, W):
    x = GaussianPrior((H, W)).sample(1, generator=torch.Generator().manual_seed(H))[0]
    smaps = torch.ones(2, H, W, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, W, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:, W // 2 - 4:W // 2 + 4] = True  # 8 central lines: SPIRiT's 7x7 kernel calibrates there
    return fft2c(x * smaps), mask, smaps


def _check(res, H, W):
    assert res.image.shape == (H, W) and res.nfe > 0
    assert torch.isfinite(res.image.abs()).all()  # score-mri ssos: real (RSS)


@pytest.mark.parametrize("H,W", SIZES)
@pytest.mark.parametrize("method", VP_METHODS)
def test_vp_methods_at_any_size(checkpoints, method, H, W):
    k, mask, smaps = _data(H, W)
    opts = {"t0": 1.0} if method == "ccdf" else {}  # both steps (t0 N of N = 2)
    res = medrecon.reconstruct(k, mask, method=method, smaps=smaps, seed=0, steps=2,
                               checkpoint=str(checkpoints / "vp"), **opts)
    _check(res, H, W)


@pytest.mark.parametrize("H,W", SIZES)
def test_score_methods_and_fdmr_at_any_size(checkpoints, H, W):
    k, mask, smaps = _data(H, W)
    _check(medrecon.reconstruct(k, mask, method="hfs-sde", smaps=smaps, seed=0, steps=2,
                                checkpoint=str(checkpoints / "hfs")), H, W)
    _check(medrecon.reconstruct(k, mask, method="score-mri", smaps=smaps, seed=0, steps=2, variant="sense",
                                checkpoint=str(checkpoints / "vp")), H, W)
    _check(medrecon.reconstruct(k, mask, method="fdmr", smaps=smaps, seed=0, adapt_iters=2,
                                checkpoint=str(checkpoints / "ddgan")), H, W)


def test_ct_networks_at_any_size():
    from medrecon.ct.autoencoder import ae_preset, build_autoencoder
    from medrecon.ct.cold_diffusion import build_cold_model, reconstruct_cold
    from medrecon.ct.pixel_ddpm import build_pixel_ddpm, sample_pixel_ddpm

    ldct = torch.rand(2, 1, 27, 35, generator=torch.Generator().manual_seed(0))
    ae = build_autoencoder(ae_preset("tiny"), seed=0).eval()  # downsamples by 2
    cold = build_cold_model(CFG, latent_channels=ae.latent_channels, T=2, seed=0)  # 8 on the latent
    out, nfe = reconstruct_cold(cold, ae, ldct)  # padded to 32 x 48 (multiples of 2 x 8)
    assert out.shape == ldct.shape and nfe == 2 and torch.isfinite(out).all()
    pix = build_pixel_ddpm(UNetConfig(**{**CFG.to_dict(), "in_channels": 2, "out_channels": 1}), seed=0)
    g = torch.Generator().manual_seed(0)
    ldct = torch.rand(2, 1, 30, 22, generator=g)
    out, nfe = sample_pixel_ddpm(pix, ldct, "ddim", 2, generator=g)
    assert out.shape == (2, 1, 30, 22) and nfe == 2 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"ldct: image size 12x35 .* minimum is 16x16"):
        reconstruct_cold(cold, ae, torch.rand(1, 1, 12, 35))


def test_image_smaller_than_the_network_is_refused(checkpoints):
    k, mask, smaps = _data(6, 22)
    with pytest.raises(ValueError, match=r"image size 6x22 is smaller .* minimum is 8x8"):
        medrecon.reconstruct(k, mask, method="dds", smaps=smaps, steps=2, checkpoint=str(checkpoints / "vp"))
