"""Every posterior sampler takes ``callback(i, x)`` (issue 16): called once per step with the step index
and the current state, and observing only -- the sample is bit-identical with and without it."""
import math

import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.hfs_process import HFSSDE
from medrecon.models.schedules import make_betas
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI
from medrecon.physics.spirit import SpiritOperator
from medrecon.posterior import (ccdf, coil_score_from_image_prior, ddnm, dds, diffpir, dps, gaussian_hfs_score,
                                hfs_sde, score_mri, score_mri_ssos, spirit_diffusion)
from medrecon.posterior.score_mri import score_mri_hybrid

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

H = W = 8
PR = GaussianPrior((H, W), p=1.5, k0=1.0)
BETAS = make_betas("linear", 1000)
EPS = PR.eps_fn(BETAS)
MASK = torch.zeros(H, W, dtype=torch.bool)
MASK[:, [0, 3, 4, 6]] = True
OP = SingleCoilMRI(MASK)
Y = PR.measure(PR.sample(2, generator=torch.Generator().manual_seed(1)), MASK)
SMAPS = torch.ones(2, H, W, dtype=torch.complex64) / math.sqrt(2)
YC = MultiCoilMRI(SMAPS, MASK[:1]).forward(PR.sample(1, generator=torch.Generator().manual_seed(2)))[0]
HFS = HFSSDE(acs=1)
KERNEL = torch.zeros(2, 2, 3, 3, dtype=torch.complex64)
KERNEL[0, 0, 1, 1] = KERNEL[1, 1, 1, 1] = 1  # G = I: every coil image is SPIRiT-consistent


def _image_score(rho, sigma):
    return -rho / (1 + float(sigma) ** 2)


STEPS = 6
CASES = {  # name: (run(callback) -> (x, nfe), expected step indices)
    "dds": (lambda cb: dds(EPS, OP, Y, BETAS, STEPS, _g(), callback=cb), range(STEPS)),
    "dds-unipc": (lambda cb: dds(EPS, OP, Y, BETAS, STEPS, _g(), solver="unipc", callback=cb), range(STEPS)),
    "ddnm": (lambda cb: ddnm(EPS, OP, Y, BETAS, STEPS, _g(), callback=cb), range(STEPS)),
    "diffpir": (lambda cb: diffpir(EPS, OP, Y, BETAS, STEPS, _g(), sigma_n=0.1, callback=cb), range(STEPS)),
    "dps": (lambda cb: dps(EPS, OP, Y, BETAS, STEPS, _g(), callback=cb), range(STEPS)),
    "ccdf": (lambda cb: ccdf(EPS, OP, Y, BETAS, STEPS, _g(), t0=0.5, callback=cb), range(3)),
    "score-mri": (lambda cb: score_mri(EPS, OP, Y, BETAS, STEPS, _g(), callback=cb), range(STEPS)),
    "score-mri-ssos": (lambda cb: score_mri_ssos(EPS, MASK, YC, BETAS, STEPS, _g(), callback=cb), range(STEPS)),
    "score-mri-hybrid": (lambda cb: score_mri_hybrid(EPS, MASK, SMAPS, YC, BETAS, STEPS, _g(), m_steps=2,
                                                     callback=cb), range(STEPS)),
    "hfs-sde": (lambda cb: hfs_sde(gaussian_hfs_score(PR, HFS), OP, Y, HFS, STEPS, _g(), callback=cb), range(STEPS)),
    "hfs-sde-gradient": (lambda cb: hfs_sde(gaussian_hfs_score(PR, HFS), OP, Y, HFS, STEPS, _g(), dc="gradient",
                                            tweedie=False, callback=cb), range(STEPS)),
}


def _g():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("name", list(CASES))
def test_callback_sees_every_step_and_changes_nothing(name):
    run, expected = CASES[name]
    seen = []
    x, nfe = run(lambda i, x: seen.append((i, x.shape, x.clone())))
    assert [i for i, _, _ in seen] == list(expected)
    assert all(torch.isfinite(torch.view_as_real(v) if v.is_complex() else v).all() for _, _, v in seen)
    x_plain, nfe_plain = run(None)
    assert torch.equal(x, x_plain) and nfe == nfe_plain


def test_spirit_diffusion_callback_per_update():
    seen = []
    args = (coil_score_from_image_prior(_image_score, SMAPS), MASK[:1], YC, SpiritOperator(KERNEL, (H, W)), SMAPS, 4)
    x, _ = spirit_diffusion(*args, torch.Generator().manual_seed(0), nfe_per_score=1,
                            callback=lambda i, v: seen.append(i))
    # the initial data step (-1), corrector and predictor updates of each step, the returned coil images (4)
    assert seen == [-1] + [i for i in range(4) for _ in range(2)] + [4]
    assert torch.equal(x, spirit_diffusion(*args, torch.Generator().manual_seed(0), nfe_per_score=1)[0])


def test_fdmr_callback_per_generation_adaptation_and_refinement_step():
    from medrecon.models.ddgan import DDGANConfig, build_ddgan
    from medrecon.models.networks import UNetConfig
    from medrecon.posterior.fdmr import FDMROptions, fdmr

    cfg = DDGANConfig(unet=UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1),
                                      norm_num_groups=4, num_head_channels=8), num_steps=3, z_dim=8, w_dim=16,
                      d_channels=(8,))
    G = build_ddgan(cfg, seed=0)[0].eval().requires_grad_(False)
    y16 = MultiCoilMRI(torch.ones(1, 16, 16, dtype=torch.complex64), torch.ones(1, 16)).forward(
        torch.randn(16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3)))
    mask = torch.zeros(1, 16)
    mask[0, ::2] = 1
    y16 = y16 * mask
    smaps = torch.ones(1, 16, 16, dtype=torch.complex64)
    opts = FDMROptions(adapt_iters=2, refine_from=2, start=0, refine_prior="")  # the generator-only path
    seen = []
    x, nfe = fdmr(G, y16, mask, smaps, torch.Generator().manual_seed(0), opts,
                  callback=lambda i, v: seen.append((i, tuple(v.shape))))
    assert seen == [(i, (1, 16, 16)) for i in range(3 + 1 + 2)]  # 3 generation steps, adaptation, 2 refinement
    assert torch.equal(x, fdmr(G, y16, mask, smaps, torch.Generator().manual_seed(0), opts)[0])
