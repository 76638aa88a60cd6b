"""HFS-SDE and SPIRiT-Diffusion (``medrecon.posterior``) on the analytic Gaussian prior.

HFS-SDE -- setting of tests/posterior/test_posterior.py: 8x8 complex images, stationary prior p = 1.5,
k0 = 1, columns [0, 3, 4, 6] sampled (32 observed, 32 unobserved k-space samples), noise-free y,
n = 1000 samples in one batch; M_L = the 2 central columns (3, 4), inside the mask.  The exact score
of the HFS marginal is closed form (`gaussian_hfs_score`): variance lambda on M_L and
(1 - sigma^2) lambda + sigma^2 on the high frequencies.  Exact posterior: observed k equal y,
unobserved k have mean 0 and variance lambda, all independent.  Checks and tolerances:

- observed (and, separately, the M_L block): max over samples of ||M (F x - y)|| / ||y|| <= 1e-5
  (float32 round-off; hard data consistency);
- mean on unobserved k: Hotelling statistic |z| < 5; image-domain relative error of the sample mean
  vs the exact posterior mean <= 1e-5 + 3 sqrt(sum_free lambda / n) / ||y|| (statistical floor 0.078);
- variance on unobserved k: every k is independent, so with snr = 0 each runs the linear recursion
  k <- (1 + beta dt (1/2 - 1/v_t)) k + sqrt(beta dt) z (no noise on the returned x_mean); its exact
  output variance (`hfs_expected_ratio`) must match the aggregated sample-variance ratio within 5 sigma
  (sigma = 1/sqrt(K (n - 1)) = 0.0056).  Its gap to 1 is the sampler's bias at that step count:
  1.0176 at N = 100 (Tweedie last step; 1.0107 with the Euler-Maruyama mean), 1.0010 at N = 1000
  (slow test); on a prior whose high frequencies are small against beta dt (real images) the
  Euler-Maruyama last step overshoots and Tweedie's does not (`test_hfs_last_step_...`);
- a wrong data-consistency step (FFT sign flipped; a mask that differs from the data's in one column)
  and a wrong low-frequency block (not covered by the data: refused when the operator has a mask;
  frozen at zero, variance 0, when it does not) fail these checks.

SPIRiT-Diffusion -- 4 coils, 16x16, sensitivities S_c = exp(2 pi i k_c (w - W/2) / W) / 2 with
k_c = 0..3 (smooth, S^H S = 1): coil c's k-space is the image's shifted by k_c, so the SPIRiT kernel
with taps 1/3 at offsets k_c' - k_c is exact (G x = x for x = S rho) and is also what calibration
approaches.  Measured: relative Psi residual 1.1e-7 (exact kernel), 2.2e-3 (calibrated, lam 0.01).
"""
import math

import numpy as np
import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.hfs_process import HFSSDE
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI
from medrecon.physics.spirit import SpiritOperator, spirit_calibrate
from medrecon.posterior import (coil_projector, coil_score_from_image_prior, gaussian_hfs_score, hfs_sde,
                                spirit_diffusion, spirit_drift, ve_score_from_vp)
from tests.posterior.helpers import WrongSign, two_smooth_maps
# the single-coil 8x8 setting of test_posterior (4 of 8 columns, n = 1000 samples of one y)
from tests.posterior.test_posterior import FREE, LAM_FREE, MASK, OP, PR, REL_FLOOR, H, N, W, Y
from tests.posterior.test_posterior import moments as posterior_moments

SDE = HFSSDE(acs=2)
LOW = SDE.low_mask((H, W)).expand(H, W)
SCORE = gaussian_hfs_score(PR, SDE)
SIGMA = 1 / math.sqrt(len(LAM_FREE) * (N - 1))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def hfs_expected_ratio(steps, eps=1e-3, lam=LAM_FREE, tweedie=True):
    """Exact output variance / lambda on unobserved (high) k of the snr = 0 sampler with the exact score.
    Euler-Maruyama steps k <- (1 + beta dt (1/2 - 1/v_t)) k + sqrt(beta dt) z; the last one is Tweedie's
    k <- k (1 - sigma^2 / v_t) / e^c (``tweedie=True``, the default) or the noise-free EM mean."""
    ts = np.linspace(1.0, eps, steps)
    dt = 1.0 / steps
    v = np.ones_like(lam)  # x_T = A^H (M_L y) + Mhat z: variance 1 on the high frequencies
    for i, t in enumerate(ts):
        b = 0.1 + t * 19.9
        s2 = -np.expm1(2 * (-0.25 * t * t * 19.9 - 0.05 * t))
        vt = (1 - s2) * lam + s2
        if tweedie and i == steps - 1:
            g = (1 - s2 / vt) / np.sqrt(1 - s2)
        else:
            g = 1 + b * dt * (0.5 - 1 / vt)
        v = g * g * v + (b * dt if i < steps - 1 else 0.0)
    return v / lam


def moments(out):
    return posterior_moments(out, LOW)


def passes(mo, expected, obs_tol=1e-5):
    return (mo["obs"] <= obs_tol and mo["low"] <= obs_tol and abs(mo["mean_z"]) < 5
            and mo["rel"] <= obs_tol + REL_FLOOR and mo["ratio"].min() > 0.1
            and abs((mo["ratio"] / expected).mean() - 1) < 5 * SIGMA)


# ------------------------------------------------------------------ HFS: forward process
def test_hfs_forward_process_on_the_gaussian_prior():
    """Low frequencies never change; the high ones have variance (1 - std^2) lambda + std^2 (the
    closed form the exact score uses), within 5 sigma of the chi-square spread; repo geometry."""
    x0 = PR.sample(4000, generator=gen(2))
    t = 0.3
    xt = SDE.perturb(x0, t, torch.randn(x0.shape, generator=gen(3), dtype=x0.dtype))
    k0, kt = fft2c(x0), fft2c(xt)
    assert (kt - k0)[:, LOW].abs().max() < 1e-5
    s2 = float(SDE.std(t)) ** 2
    assert abs(s2 - (1 - math.exp(2 * float(SDE.log_mean_coeff(t))))) < 1e-12
    want = ((1 - s2) * PR.lam + s2)[~LOW]
    ratio = (kt[:, ~LOW].abs().pow(2).mean(0).double() / want)
    assert abs(ratio.mean().item() - 1) < 5 / math.sqrt(4000 * int((~LOW).sum()))
    drift, diff = SDE.sde(x0[:2], t)
    assert torch.allclose(drift, -0.5 * SDE.beta(t).item() * SDE.high_pass(x0[:2]), atol=1e-6)
    assert abs(diff.item() ** 2 - (0.1 + 0.3 * 19.9)) < 1e-5  # float32, like x
    m = HFSSDE(acs=16).low_mask((320, 320))  # the repo's low_frequency_acs16: columns 152..167
    assert m.shape == (1, 320) and m[0].nonzero().squeeze().tolist() == list(range(152, 168))
    hp = SDE.high_pass(x0[:3])
    assert torch.allclose(SDE.high_pass(hp), hp, atol=1e-6)  # a projector
    assert HFSSDE.from_dict(SDE.to_dict()).to_dict() == SDE.to_dict()


# ------------------------------------------------------------------ HFS: sampler vs the exact posterior
def test_hfs_sampler_against_exact_posterior():
    out, nfe = hfs_sde(SCORE, OP, Y, SDE, 100, gen(5), snr=0.0)
    assert out.shape == Y.shape and out.dtype == Y.dtype and nfe == 200
    expected = hfs_expected_ratio(100)
    assert abs(expected.mean() - 1.0176) < 1e-3  # the bias of N = 100 against the exact variance
    mo = moments(out)
    assert mo["obs"] <= 1e-5 and mo["low"] <= 1e-5, (mo["obs"], mo["low"])
    assert abs(mo["mean_z"]) < 5, mo["mean_z"]
    assert mo["rel"] <= 1e-5 + REL_FLOOR, (mo["rel"], REL_FLOOR)
    agg = (mo["ratio"] / expected).mean()
    assert abs(agg - 1) < 5 * SIGMA, agg
    assert passes(mo, expected)


def test_hfs_last_step_tweedie_against_euler_maruyama_overshoot():
    """A prior with tiny high-frequency variance (lambda / 1000, as real images have against the
    noise): at N = 100 the Euler-Maruyama mean of the last step (t = 1e-3, beta dt = 1.2e-3 against
    v_t ~ 1e-4) multiplies the residual noise by |1 + beta dt (1/2 - 1/v_t)| ~ 10, the bench's
    N = 100 divergence; the Tweedie last step E[x0 | x_t] does not (exact output variance / posterior
    variance: 5.6 against 133; the rest of the gap is the earlier EM steps' bias at N = 100).
    Both runs match their exact recursion (`hfs_expected_ratio`) within 5 sigma."""
    import copy

    small = copy.copy(PR)
    small.lam = PR.lam * 1e-3
    score = gaussian_hfs_score(small, SDE)
    lam = small.lam[FREE].numpy()
    ratios = {}
    for tw in (True, False):
        out, _ = hfs_sde(score, OP, Y, SDE, 100, gen(30), snr=0.0, tweedie=tw)
        k = fft2c(out)
        v = (k - k.mean(0)).abs().pow(2).sum(0) / (N - 1)
        ratio = (v[FREE].double().numpy() / lam)
        expected = hfs_expected_ratio(100, lam=lam, tweedie=tw)
        assert abs((ratio / expected).mean() - 1) < 5 * SIGMA, (tw, (ratio / expected).mean())
        ratios[tw] = ratio.mean()
    assert ratios[True] < 10 and ratios[False] > 10 * ratios[True], ratios  # measured 5.5 and 130


def test_hfs_default_corrector_and_gradient_dc():
    """Langevin corrector (snr 0.16): unadjusted Langevin inflates the variance (v / (1 - e / 2v) per
    step); measured ratio 1.043 at N = 100, band [0.97, 1.15] as for Score-MRI.  The repo's gradient
    DC (dc="gradient"): no projection, so the observed high frequencies are only pulled towards y
    (measured worst residual 0.11 at N = 50); the low frequencies come from the data at the start and the
    single-coil gradient lives on the observed samples, so they stay exact, and the unobserved k
    follow the same recursion as with hard DC."""
    out, _ = hfs_sde(SCORE, OP, Y, SDE, 100, gen(6))
    mo = moments(out)
    assert mo["obs"] <= 1e-5 and mo["low"] <= 1e-5 and abs(mo["mean_z"]) < 5
    assert 0.97 < mo["ratio"].mean() < 1.15, mo["ratio"].mean()
    out, _ = hfs_sde(SCORE, OP, Y, SDE, 50, gen(7), snr=0.0, dc="gradient")
    mo = moments(out)
    assert mo["low"] <= 1e-5 and 1e-3 < mo["obs"] < 0.2, mo
    assert abs((mo["ratio"] / hfs_expected_ratio(50)).mean() - 1) < 5 * SIGMA


class NoMask:
    """The right operator without a ``mask`` attribute: the sampler cannot check M_L against it."""

    def __init__(self, op):
        self.forward, self.adjoint, self.normal, self.project = op.forward, op.adjoint, op.normal, op.project


def test_hfs_wrong_data_consistency_or_low_frequency_block_fails():
    expected = hfs_expected_ratio(10)
    other = MASK.clone()
    other[:, 6], other[:, 7] = False, True  # one column differs from the data's mask
    for op, sde in ((WrongSign(MASK), SDE), (SingleCoilMRI(other), SDE), (NoMask(OP), HFSSDE(acs=4))):
        out, _ = hfs_sde(SCORE, op, Y, sde, 10, gen(8), snr=0.0)
        mo = moments(out)
        assert math.isfinite(mo["obs"]) and not passes(mo, expected)
    out, _ = hfs_sde(SCORE, NoMask(OP), Y, SDE, 10, gen(8), snr=0.0)  # the right one passes at N = 10
    assert passes(moments(out), expected)
    with pytest.raises(ValueError, match="low frequencies"):  # M_L = columns 2..5, the mask lacks 2 and 5
        hfs_sde(SCORE, OP, Y[:2], HFSSDE(acs=4), 5, gen(0))


def test_hfs_seeds_multicoil_and_bad_input():
    a = hfs_sde(SCORE, OP, Y[:4], SDE, 10, gen(3))[0]
    assert torch.equal(a, hfs_sde(SCORE, OP, Y[:4], SDE, 10, gen(3))[0])
    assert not torch.equal(a, hfs_sde(SCORE, OP, Y[:4], SDE, 10, gen(4))[0])
    # SENSE (no project: CG data consistency), two smooth maps
    A = MultiCoilMRI(two_smooth_maps(H, W), MASK)
    y = A.forward(PR.sample(8, generator=gen(10)))
    out, nfe = hfs_sde(SCORE, A, y, SDE, 10, gen(11), cg_iters=20)
    assert nfe == 20 and ((A.forward(out) - y).norm() / y.norm()).item() < 1e-3
    with pytest.raises(ValueError, match="generator"):
        hfs_sde(SCORE, OP, Y[:2], SDE, 10, None)
    with pytest.raises(ValueError, match="complex"):
        hfs_sde(SCORE, OP, Y[:2].real, SDE, 10, gen(0))
    with pytest.raises(ValueError, match="steps"):
        hfs_sde(SCORE, OP, Y[:2], SDE, 0, gen(0))
    with pytest.raises(ValueError, match="dc"):
        hfs_sde(SCORE, OP, Y[:2], SDE, 10, gen(0), dc="soft")
    with pytest.raises(ValueError, match="HFSSDE"):
        hfs_sde(SCORE, OP, Y[:2], "hfs", 10, gen(0))
    with pytest.raises(ValueError, match="acs"):
        HFSSDE(acs=0)


@pytest.mark.slow
def test_hfs_variance_converges_at_1000_steps():
    expected = hfs_expected_ratio(1000)
    assert abs(expected.mean() - 1) < 2e-3  # 1.0010
    out, _ = hfs_sde(SCORE, OP, Y, SDE, 1000, gen(14), snr=0.0)
    assert passes(moments(out), expected)


# ------------------------------------------------------------------ SPIRiT-Diffusion
HS = WS = 16
C = 4
SHIFTS = (0, 1, 2, 3)
_w = torch.arange(WS) - WS // 2
SMAPS = (torch.stack([torch.exp(2j * math.pi * k * _w / WS).expand(HS, WS) for k in SHIFTS]) / math.sqrt(C)
         ).to(torch.complex64)
KERNEL = torch.zeros(C, C, 7, 7, dtype=torch.complex64)
for _c in range(C):
    for _d in range(C):
        if _c != _d:
            KERNEL[_c, _d, 3, 3 + SHIFTS[_d] - SHIFTS[_c]] = 1 / (C - 1)
G = SpiritOperator(KERNEL, (HS, WS))
PR16 = GaussianPrior((HS, WS))
RHO = PR16.sample(4, generator=gen(20))
SMASK = torch.zeros(1, WS, dtype=torch.bool)
SMASK[:, ::2] = True
SMASK[:, 6:10] = True
A16 = MultiCoilMRI(SMAPS, SMASK)
YC = A16.forward(RHO)  # [4, C, 16, 16]


def coil_score(x, sigma):
    """Exact coil-space score of the VE marginal x_t = S (rho + sigma S^H z): S grad log p_sigma(S^H x)."""
    rho = (SMAPS.conj() * x).sum(-3)
    s = ifft2c(-fft2c(rho) / (PR16.lam.float() + sigma ** 2))
    return SMAPS * s.unsqueeze(-3)


def test_spirit_drift_vanishes_on_consistent_data():
    x = SMAPS * RHO.unsqueeze(-3)
    noise = torch.randn(x.shape, generator=gen(21), dtype=x.dtype)
    assert (spirit_drift(x, G).norm() / x.norm()).item() < 1e-6  # exact kernel: 1.1e-7 relative Psi x
    assert (spirit_drift(noise, G).norm() / noise.norm()).item() > 0.1  # inconsistent coil images
    P = coil_projector(SMAPS)
    assert torch.allclose(P(x), x, atol=1e-5) and torch.allclose(P(P(noise)), P(noise), atol=1e-5)
    full = fft2c(SMAPS * PR16.sample(8, generator=gen(22)).unsqueeze(-3))
    cal = SpiritOperator(spirit_calibrate(full[0], calib_width=16, kernel_width=7), (HS, WS))
    assert (cal.normal(x).norm() / x.norm()).item() < 2e-3  # calibrated: measured 4.4e-4
    assert (spirit_drift(x, cal, eta=1.0).norm() / x.norm()).item() < 1e-3


def test_spirit_diffusion_reconstructs_and_keeps_the_data():
    """Exact score, exact kernel, hard DC, predictor only (snr = 0), N = 100: error 5e-4 measured
    (tolerance 0.05) against 0.317 for the SENSE zero-filled image A^H y (without the range projection,
    in_range=False: 4.05, measured on this test).  With the Langevin corrector
    the output is a posterior sample, not the data's image: measured 0.081 at snr = 0.16 and 0.28 at
    the repo's 0.7 (SPIRiT-Diffusion's snr is tuned per prior, as the paper says).  The mean of 8
    corrector samples (snr 0.1, N = 50) beats zero-filled: measured 0.021 against 0.321 for that slice."""
    zf = ((A16.adjoint(YC) - RHO).norm() / RHO.norm()).item()
    coils, nfe = spirit_diffusion(coil_score, SMASK, YC, G, SMAPS, 100, gen(23), snr=0.0, combine="coils")
    assert coils.shape == YC.shape and nfe == 100 * 2 * C
    # (b) data consistency: the output is in range(S) (in_range), its data step a unit SENSE Landweber
    # step rho + A^H (y - A rho), not per-coil replacement: measured residual 4.3e-4
    assert ((fft2c(coils) * SMASK - YC).norm() / YC.norm()).item() < 1e-3
    assert torch.allclose(coil_projector(SMAPS)(coils), coils, atol=1e-4)
    img = (SMAPS.conj() * coils).sum(-3)
    err = ((img - RHO).norm() / RHO.norm()).item()
    assert zf > 0.25 and err < 0.05, (err, zf)  # (c)
    a, _ = spirit_diffusion(coil_score, SMASK, YC, G, SMAPS, 100, gen(23), snr=0.0)
    assert torch.equal(a, img)  # deterministic per seed (combine="sense" is S^H of the coils)
    y8 = YC[:1].expand(8, C, HS, WS)
    m8, _ = spirit_diffusion(coil_score, SMASK, y8, G, SMAPS, 50, gen(24), snr=0.1)
    err8 = ((m8.mean(0) - RHO[0]).norm() / RHO[0].norm()).item()
    assert err8 < zf, (err8, zf)


def image_score(rho, sigma):
    """Exact VE score of the Gaussian image prior at noise level sigma."""
    return ifft2c(-fft2c(rho) / (PR16.lam.float() + torch.as_tensor(sigma).float() ** 2))


def test_image_prior_lifted_to_coil_space():
    """The VP eps of the Gaussian prior, converted to VE scores (`ve_score_from_vp`), is the exact VE
    score (3e-4 at sigmas of integer timesteps, where no interpolation enters: float32 round-off, measured
    8e-5 at sigma 0.01; 2e-3 between them, log-sigma vs sigma interpolation); lifted by S (`coil_score_from_image_prior`) it is the exact
    coil-space score; SPIRiT-Diffusion on it (noise kept in the range of S, one network call per
    score) reconstructs as on the exact coil score (error 0.05 at N = 100, snr = 0)."""
    from medrecon.models.schedules import VPSchedule, make_betas

    betas = make_betas("linear", 1000)
    sched = VPSchedule(betas)
    score = ve_score_from_vp(PR16.eps_fn(betas), sched)
    rho = PR16.sample(3, generator=gen(40)) * 0.7 + 0.1 * PR16.sample(3, generator=gen(41))
    for t, tol in ((0.0, 3e-4), (10.0, 3e-4), (300.0, 3e-4), (999.0, 3e-4), (123.4, 2e-3), (700.7, 2e-3)):
        sigma = sched.edm_sigma(torch.tensor(t)).float()
        x = rho + sigma * torch.randn(rho.shape, generator=gen(42), dtype=rho.dtype)
        exact = image_score(x, sigma)
        err = ((score(x, sigma) - exact).norm() / exact.norm()).item()
        assert err < tol, (t, err)
    x = SMAPS * rho[:, None] + torch.randn((3, C, HS, WS), generator=gen(43), dtype=torch.complex64)
    lifted = coil_score_from_image_prior(image_score, SMAPS)(x, 0.3)
    assert torch.allclose(lifted, coil_score(x, 0.3), rtol=1e-5, atol=1e-5)
    out, nfe = spirit_diffusion(coil_score_from_image_prior(score, SMAPS), SMASK, YC, G, SMAPS, 100, gen(23),
                                snr=0.0, sigma_min=float(sched.edm_sigma(0.0)),
                                sigma_max=float(sched.edm_sigma(999.0)), nfe_per_score=1, in_range=True)
    assert nfe == 100 * 2
    err = ((out - RHO).norm() / RHO.norm()).item()
    zf = ((A16.adjoint(YC) - RHO).norm() / RHO.norm()).item()
    assert err < 0.05 and zf > 0.25, (err, zf)


def test_spirit_diffusion_options_seeds_and_bad_input():
    a, _ = spirit_diffusion(coil_score, SMASK, YC[:1], KERNEL, SMAPS, 5, gen(1), dc="gradient")
    b, nfe = spirit_diffusion(coil_score, SMASK, YC[:1], G, SMAPS, 5, gen(1), dc="gradient")
    assert torch.equal(a, b) and torch.isfinite(a).all() and nfe == 5 * 2 * C
    c, _ = spirit_diffusion(coil_score, SMASK, YC[:1], G, SMAPS, 5, gen(2), dc="gradient")
    assert not torch.equal(a, c)
    r, _ = spirit_diffusion(coil_score, SMASK, YC[:1], G, SMAPS, 3, gen(1), combine="rss", n_corrector=0)
    assert r.shape == (1, HS, WS) and not r.is_complex()
    with pytest.raises(ValueError, match="smaps"):
        spirit_diffusion(coil_score, SMASK, YC, G, SMAPS[:3], 5, gen(0))
    with pytest.raises(ValueError, match="spirit"):
        spirit_diffusion(coil_score, SMASK, YC, SpiritOperator(KERNEL[:3, :3], (HS, WS)), SMAPS, 5, gen(0))
    with pytest.raises(ValueError, match="complex"):
        spirit_diffusion(coil_score, SMASK, YC.real, G, SMAPS, 5, gen(0))
    with pytest.raises(ValueError, match="generator"):
        spirit_diffusion(coil_score, SMASK, YC, G, SMAPS, 5, None)
    with pytest.raises(ValueError, match="dc"):
        spirit_diffusion(coil_score, SMASK, YC, G, SMAPS, 5, gen(0), dc="soft")
    with pytest.raises(ValueError, match="mask"):
        spirit_diffusion(coil_score, torch.ones(1, 5, dtype=torch.bool), YC, G, SMAPS, 5, gen(0))
    with pytest.raises(ValueError, match="NaN"):
        spirit_diffusion(coil_score, SMASK, YC * float("nan"), G, SMAPS, 5, gen(0))

