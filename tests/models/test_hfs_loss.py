"""The HFS-SDE training loss (``medrecon.models.hfs_process``) on the analytic Gaussian prior.

8x8 complex images, stationary prior p = 1.5, k0 = 1, M_L = 2 central columns.  The loss
E || std Mhat s(x_t) + Mhat z ||^2 is minimised by Mhat s = Mhat grad log p_t; for this prior the exact
score of the HFS marginal is closed form (``medrecon.posterior.gaussian_hfs_score``), and so is the
minimum: per high frequency k, E|std s_k + z_k|^2 = Var(z_k | x_t) = e^{2c} lam_k / v_k with
v_k = e^{2c} lam_k + std^2, so the expected loss is the t-average of sum_HF e^{2c} lam / v / (2 H W)
(mean over real and imaginary parts).  Monte-Carlo tolerances come from the spread of 16 independent
batch chunks (5 standard errors).  With common random numbers (same generator seed) the loss of
a * s_exact is an exact quadratic in a, whose minimiser must be 1 within its own 5 standard errors.
"""
import math

import numpy as np
import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.hfs_process import HFSSDE, hfs_loss, hfs_score_fn
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.posterior import gaussian_hfs_score

H = W = 8
PR = GaussianPrior((H, W), p=1.5, k0=1.0)
SDE = HFSSDE(acs=2)
EXACT = gaussian_hfs_score(PR, SDE)
HF = ~SDE.low_mask((H, W)).expand(H, W)
B = 1024
CHUNKS = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def data(seed):
    return PR.sample(B, generator=gen(seed))


def expected_minimum(eps=1e-5, n=20001):
    ts = np.linspace(eps, 1.0, n)
    lam = PR.lam[HF].numpy()
    vals = []
    for t in ts:
        e2c = math.exp(2 * float(SDE.log_mean_coeff(t)))
        vals.append((e2c * lam / (e2c * lam + 1 - e2c)).sum() / (2 * H * W))
    return float(np.trapezoid(vals, ts) / (1 - eps))


def chunk_losses(score_fn):
    return np.array([hfs_loss(score_fn, data(100 + i), SDE, gen(200 + i)).item() for i in range(CHUNKS)])


def test_exact_score_attains_the_closed_form_minimum():
    losses = chunk_losses(EXACT)
    se = losses.std(ddof=1) / math.sqrt(CHUNKS)
    want = expected_minimum()
    assert abs(losses.mean() - want) < 5 * se, (losses.mean(), want, se)
    # the score of a variance-exploding marginal (variance lam + std^2: the e^c decay of the high
    # frequencies ignored) is a different target; on the same draws its loss is higher, by more than
    # 5 standard errors of the difference
    def ve(x, sigma):
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2
        return ifft2c(-fft2c(x) / (PR.lam + s2).to(torch.float32))
    diff = chunk_losses(ve) - losses
    assert diff.mean() > 5 * diff.std(ddof=1) / math.sqrt(CHUNKS), diff


def test_loss_is_minimised_by_the_exact_score():
    x0, seed = data(1), 2

    def loss(fn):
        return hfs_loss(fn, x0, SDE, gen(seed)).item()

    def scaled(a):
        return lambda x, s: a * EXACT(x, s)
    l0, lm, lp = loss(scaled(1.0)), loss(scaled(0.9)), loss(scaled(1.1))
    a_star = 1 - 0.1 * (lp - lm) / (2 * (lp - 2 * l0 + lm))  # vertex of the exact quadratic
    # 5 standard errors of the vertex, from 16 independent chunks
    verts = []
    for i in range(CHUNKS):
        xi = data(300 + i)
        f = [hfs_loss(scaled(a), xi, SDE, gen(400 + i)).item() for a in (0.9, 1.0, 1.1)]
        verts.append(1 - 0.1 * (f[2] - f[0]) / (2 * (f[2] - 2 * f[1] + f[0])))
    sd = np.std(verts, ddof=1)  # spread of one batch's vertex
    assert abs(np.mean(verts) - 1) < 5 * sd / math.sqrt(CHUNKS), (np.mean(verts), sd)
    assert abs(a_star - 1) < 5 * sd, (a_star, sd)
    assert l0 < lm and l0 < lp
    # other perturbations of the high-frequency part raise the loss; the low-frequency part is free
    g = gen(5)
    bump = ifft2c(torch.randn(H, W, generator=g, dtype=torch.complex64))

    def plus(v):
        return lambda x, s: EXACT(x, s) + v
    assert loss(plus(0.3 * SDE.high_pass(bump))) > l0
    other = gaussian_hfs_score(GaussianPrior((H, W), p=1.0, k0=1.0), SDE)
    assert loss(other) > l0
    low_only = loss(plus(5.0 * SDE.low_pass(bump)))
    assert abs(low_only - l0) <= 1e-6 * l0


def test_diffusion_model_path_and_bad_input():
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VE, VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VE(0.01, 50.0), "score", network_config=cfg)
    x0 = GaussianPrior((16, 16)).sample(2, generator=gen(0))
    loss = hfs_loss(model, x0, HFSSDE(acs=4), gen(1))
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.net.parameters() if p.grad is not None)
    with torch.no_grad():
        same = hfs_loss(hfs_score_fn(model), x0, HFSSDE(acs=4), gen(1))
    assert abs(same.item() - loss.item()) <= 1e-5 * loss.item()
    vp = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas()), "eps", network_config=cfg)
    with pytest.raises(ValueError, match="score"):
        hfs_loss(vp, x0, HFSSDE(acs=4), gen(1))
    with pytest.raises(ValueError, match="complex"):
        hfs_loss(EXACT, x0.real, SDE, gen(1))
    with pytest.raises(ValueError, match="HFSSDE"):
        hfs_loss(EXACT, x0, None, gen(1))
    with pytest.raises(ValueError, match="generator"):
        hfs_loss(EXACT, x0, SDE, None)
    with pytest.raises(ValueError, match="region"):
        HFSSDE(region="circle")
