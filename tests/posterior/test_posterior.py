"""Posterior samplers (``medrecon.posterior``) against the exact Gaussian posterior (``medrecon.gaussian_prior``).

Setting: 8x8 complex images, stationary prior p = 1.5, k0 = 1 (lambda in [0.068, 13]), a column mask
of 4 of 8 columns (32 observed, 32 unobserved k-space samples), noise-free y, n = 1000 samples in one
batch, linear betas (1000).  Exact posterior: observed k equal y (variance 0); unobserved k have
mean 0 and variance lambda; all k independent.

Checks and where the tolerances come from:

- observed: max over samples of ||M (F x - y)|| / ||y|| <= ``obs_tol``: 1e-5 (float32 round-off) for
  the methods with a hard data step (DDS's default, gamma=None, included; gamma = 5 would leave
  1/(1 + gamma) of the residual of x0_hat at t = 0: test_soft_dds_step_is_detected);
  DPS 2 zeta / ||y||: no projection; each step moves x by zeta along a unit vector (the normalised
  residual through the Jacobian, ~1 at small t), so the residual norm stays O(zeta).
- mean (unobserved): the Hotelling statistic sum_k 2n|m_k|^2 / v_k ~ chi2(2K) (v_k the sample
  variance, so the test holds whatever the method's variance); |z| < 5.  Image-domain relative
  error of the sample mean vs the exact posterior mean <= obs_tol + 3 sqrt(sum_free lambda / n)/||y||
  (the statistical floor, 0.078 here).
- variance (unobserved): every operator here is diagonal in k, so on unobserved k each sampler runs
  its *unconditional* linear recursion; ``expected_ratio`` propagates the variance exactly through
  that recursion (10 lines per scheme) and the aggregated sample-variance ratio must match it within
  5 sigma (sigma = 1/sqrt(K (n - 1)) = 0.0056).  Its gap to 1 is the method's bias against the exact
  posterior at that step count, asserted below (slow tests: -> 1 as N grows).
- a wrong data-consistency step (FFT sign convention flipped; mask shifted by a column) fails.
"""
import math

import numpy as np
import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.schedules import make_betas
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI
from medrecon.posterior import ccdf, ddnm, dds, diffpir, dps, score_mri, score_mri_ssos
from tests.posterior.helpers import WrongSign, two_smooth_maps

H = W = 8
PR = GaussianPrior((H, W), p=1.5, k0=1.0)
BETAS = make_betas("linear", 1000)
ACP = torch.cumprod(1 - BETAS.float(), 0).double().numpy()
EPS = PR.eps_fn(BETAS)
MASK = torch.zeros(H, W, dtype=torch.bool)
MASK[:, [0, 3, 4, 6]] = True
FREE = ~MASK
X_TRUE = PR.sample(1, generator=torch.Generator().manual_seed(1))
Y1 = PR.measure(X_TRUE, MASK)
N = 1000
Y = Y1.expand(N, H, W)
OP = SingleCoilMRI(MASK)
POST_MEAN, POST_VAR = PR.posterior(Y1, MASK)
LAM_FREE = PR.lam[FREE].numpy()
REL_FLOOR = 3 * math.sqrt(LAM_FREE.sum() / N) / Y1.norm().item()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ exact variance recursions
def expected_ratio(kind, steps, start=0, v0=1.0, eta=0.0, zeta=0.0):
    """Exact output variance / lambda on unobserved k of the per-frequency linear recursion.

    With exact eps, x0_hat = sqrt(a) lam / v_t x and eps_hat = sqrt(1 - a) / v_t x, v_t = a lam + 1 - a.
    kind "ddim": DDIM(eta) step; "diffpir": sqrt(ap) x0 + sqrt(1-ap)(sqrt(1-zeta) eps + sqrt(zeta) z),
    which is also the DDNM/DDS reference update (posterior/ddim_dc.py) with zeta = eta^2 (on unobserved k
    the data step leaves x0 alone, so the network's eps and the re-derived one agree);
    "score": Score-MRI with snr = 0 (reverse-diffusion predictor; the last step without noise).
    ``v0`` is the variance of the state at grid index ``start``.
    """
    lam = LAM_FREE
    ts = np.arange(steps)[::-1] * (1000 // steps)
    v = np.full_like(lam, v0)
    for t in ts[start:]:
        tp = t - 1000 // steps
        a, ap = ACP[t], (ACP[tp] if tp >= 0 else 1.0)
        vt = a * lam + 1 - a
        c0, c1 = math.sqrt(a) * lam / vt, math.sqrt(1 - a) / vt
        if kind == "ddim":
            s2 = eta ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
            g, q = math.sqrt(ap) * c0 + math.sqrt(max(1 - ap - s2, 0)) * c1, s2
        elif kind == "diffpir":
            g, q = math.sqrt(ap) * c0 + math.sqrt((1 - ap) * (1 - zeta)) * c1, (1 - ap) * zeta
        else:
            b = 1 - a / ap
            g, q = 2 - math.sqrt(1 - b) - b / vt, (b if t > ts[-1] else 0.0)
        v = g * g * v + q
    return v / lam


# ------------------------------------------------------------------ moments vs the exact posterior
def moments(out, low=None):
    """obs / mean_z / rel / ratio of the samples ``out`` (module docstring); with a k-space mask ``low``
    also "low", the worst relative residual there (HFS-SDE's fixed low frequencies)."""
    k = fft2c(out)
    n = k.shape[0]
    m = k.mean(0)
    v = (k - m).abs().pow(2).sum(0) / (n - 1)
    obs = ((k - Y1).mul(MASK).flatten(1).norm(dim=1).max() / Y1.norm()).item()  # worst sample
    dof = 2 * int(FREE.sum())
    stat = (2 * n * (m[FREE] - POST_MEAN[0, FREE]).abs() ** 2 / v[FREE].clamp_min(1e-30)).sum().item()
    pm = ifft2c(POST_MEAN[0])
    rel = ((ifft2c(m) - pm).norm() / pm.norm()).item()
    ratio = (v[FREE] / POST_VAR[0, FREE]).double().numpy()
    mo = {"obs": obs, "mean_z": (stat - dof) / math.sqrt(2 * dof), "rel": rel, "ratio": ratio}
    if low is not None:
        mo["low"] = ((k - Y1).mul(low).flatten(1).norm(dim=1).max() / Y1.norm()).item()
    return mo


def passes(mo, obs_tol):
    return mo["obs"] <= obs_tol and abs(mo["mean_z"]) < 5 and mo["rel"] <= obs_tol + REL_FLOOR


def assert_posterior(mo, obs_tol, expected):
    assert mo["obs"] <= obs_tol, mo["obs"]
    assert abs(mo["mean_z"]) < 5, mo["mean_z"]
    assert mo["rel"] <= obs_tol + REL_FLOOR, (mo["rel"], REL_FLOOR)
    assert mo["ratio"].min() > 0.1  # unobserved k vary
    sigma = 1 / math.sqrt(len(LAM_FREE) * (N - 1))
    if expected is not None:  # the aggregated variance ratio equals the recursion's, 5 sigma
        agg = (mo["ratio"] / expected).mean()
        assert abs(agg - 1) < 5 * sigma, (agg, expected.mean())


# (method, kwargs, obs_tol, exact variance ratio on unobserved k of the method at these steps)
CASES = {
    # (cg_iters = 2: for a mask the CG residual lies in one eigenspace of I + gamma A^H A, one step is exact)
    "dds": (dds, dict(steps=50, cg_iters=2), 1e-5, expected_ratio("diffpir", 50, zeta=0.85 ** 2)),
    "ddnm": (ddnm, dict(steps=50), 1e-5, expected_ratio("diffpir", 50, zeta=0.85 ** 2)),
    "diffpir": (diffpir, dict(steps=50, zeta=0.3), 1e-5, expected_ratio("diffpir", 50, zeta=0.3)),
    # CCDF: 30 of 100 steps from A^H y, whose unobserved k are 0: the state there has variance 1 - abar
    "ccdf": (ccdf, dict(steps=100, t0=0.3), 1e-5,
             expected_ratio("diffpir", 100, start=70, v0=1 - ACP[(100 - 70 - 1) * 10], zeta=0.85 ** 2)),
    "dps": (dps, dict(steps=100), 2 / Y1.norm().item(), expected_ratio("ddim", 100, eta=1.0)),
    "score-mri": (score_mri, dict(steps=100, snr=0.0), 1e-5, expected_ratio("score", 100)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_against_exact_posterior(name):
    fn, kw, obs_tol, expected = CASES[name]
    out, nfe = fn(EPS, OP, Y, BETAS, generator=gen(5), **kw)
    assert out.shape == Y.shape and out.dtype == Y.dtype
    assert nfe == (2 * kw["steps"] if name == "score-mri" else round(kw["steps"] * kw.get("t0", 1)))
    assert_posterior(moments(out), obs_tol, expected)


def test_score_mri_default_corrector_and_real_imag_variant():
    """Real/imag variant with the real prior of Re x (spectrum lambda / 2, real noise of variance 1);
    Re x and Im x are independent for this (symmetric) spectrum, so it targets the same posterior.
    The Langevin corrector (snr 0.16) biases the variance up (unadjusted Langevin: v / (1 - eps/2v)
    per step, with a random step size): at N = 1000 the predictor alone gives 1.004, with the
    corrector 1.053 was measured (N = 100: 1.051 without); band [0.97, 1.15]."""
    half = GaussianPrior((H, W), p=1.5, k0=1.0)
    half.lam = PR.lam / 2
    eps_half = half.eps_fn(BETAS)

    def eps_real(x, t):
        assert not x.is_complex() and x.shape == (2 * N, H, W)
        return eps_half(x.to(torch.complex64), t).real

    out, nfe = score_mri(eps_real, OP, Y, BETAS, 100, gen(6), real_imag=True)
    assert nfe == 2 * 2 * 100
    mo = moments(out)
    assert_posterior(mo, 1e-5, None)
    assert 0.97 < mo["ratio"].mean() < 1.15, mo["ratio"].mean()


def test_bias_against_exact_variance_at_these_step_counts():
    """What the samplers above are allowed to be off by, stated: the recursion's gap to 1.
    The DDNM/DDS reference update with eta > 0 re-noises x0_hat with eta sqrt(1 - abar') z instead of
    DDIM's smaller sigma_t, and under-disperses at any N (eta = 0.85: 0.674 at 50 steps, 0.752 at
    1000); with eta = 0 it is deterministic DDIM and converges (0.9944 at 1000, the slow test)."""
    gaps = {k: abs(v[3].mean() - 1) for k, v in CASES.items()}
    assert gaps["score-mri"] < 0.06 and gaps["dps"] < 0.12  # 1.051, 0.887
    assert 0.3 < gaps["dds"] == gaps["ddnm"] < 0.35 and gaps["diffpir"] < 0.2  # 0.674, 0.674, 0.820
    assert abs(expected_ratio("diffpir", 1000, zeta=0.85 ** 2).mean() - 1) > 0.2  # 0.752
    assert gaps["ccdf"] > 0.25  # 0.706: a warm start from A^H y is not a posterior sampler at t0 = 0.3


def diffpir_observed(y, sn, steps, zeta, lam_reg=1.0):
    """Exact (mean, var) on observed k of DiffPIR for noisy y: with x0_hat = c0 x and the prox
    x0 = (y + rho c0 x)/(1 + rho), each step is x' = G x + B y + noise (all per k, linear)."""
    lam = PR.lam[MASK].numpy()
    yk = y[MASK].numpy().astype(np.complex128)
    m, v = np.zeros_like(yk), np.ones_like(lam)
    for t in np.arange(steps)[::-1] * (1000 // steps):
        tp = t - 1000 // steps
        a, ap = ACP[t], (ACP[tp] if tp >= 0 else 1.0)
        c0 = math.sqrt(a) * lam / (a * lam + 1 - a)
        rho = lam_reg * sn ** 2 * a / (1 - a)
        p, r, e = 1 / (1 + rho), rho * c0 / (1 + rho), math.sqrt((1 - ap) * (1 - zeta))
        g = math.sqrt(ap) * r + e * (1 - math.sqrt(a) * r) / math.sqrt(1 - a)
        b = math.sqrt(ap) * p - e * math.sqrt(a) * p / math.sqrt(1 - a)
        m, v = g * m + b * yk, g * g * v + (1 - ap) * zeta
    return m, v


def test_diffpir_noisy_measurements():
    """sigma_n = 0.3: exact posterior on observed k is lam/(lam + sigma_n^2) y, variance
    lam sigma_n^2/(lam + sigma_n^2).  DiffPIR's proximal step approximates Var[x0 | x_t] by
    sigma_bar_t^2 / lam_reg, so it is approximate: by its exact recursion (which the samples must
    follow, 5 sigma) its mean is 5.0% off the posterior mean at 50 steps (1.2% at 1000) and its
    variance 0.65 of the exact (0.88 at 1000; zeta = 1: 0.48).  Ignoring the noise (sigma_n = 0 in
    the data step: hard projection onto noisy y) is more than 3x further off the posterior mean."""
    sn = 0.3
    y1 = PR.measure(X_TRUE, MASK, sn, generator=gen(30))
    pm, pv = (t[0][MASK].numpy() for t in PR.posterior(y1, MASK, sn))
    m, v = diffpir_observed(y1[0], sn, 50, 0.3)
    gap = np.linalg.norm(m - pm) / np.linalg.norm(pm)
    assert 0.03 < gap < 0.06 and 0.6 < (v / pv).mean() < 0.7
    k = fft2c(diffpir(EPS, OP, y1.expand(N, H, W), BETAS, 50, gen(31), sigma_n=sn, zeta=0.3)[0])[:, MASK].numpy()
    km, kv = k.mean(0), (np.abs(k - k.mean(0)) ** 2).sum(0) / (N - 1)
    dof = 2 * len(m)
    assert abs(((2 * N * np.abs(km - m) ** 2 / v).sum() - dof) / math.sqrt(2 * dof)) < 5
    assert abs((kv / v).mean() - 1) < 5 / math.sqrt(len(m) * (N - 1))
    assert np.linalg.norm(km - pm) / np.linalg.norm(pm) < gap + REL_FLOOR / 3
    hard = fft2c(diffpir(EPS, OP, y1.expand(N, H, W), BETAS, 50, gen(31), sigma_n=0.0)[0])[:, MASK].mean(0).numpy()
    assert np.linalg.norm(hard - pm) / np.linalg.norm(pm) > 3 * gap


@pytest.mark.parametrize("name,op", [
    ("dds", WrongSign(MASK)),
    ("ddnm", WrongSign(MASK)),
    ("ddnm", SingleCoilMRI(torch.roll(MASK, 1, dims=-1))),
    ("score-mri", SingleCoilMRI(torch.roll(MASK, 1, dims=-1))),
])
def test_wrong_data_consistency_fails(name, op):
    fn, kw, obs_tol, _ = CASES[name]
    kw = dict(kw, steps=20)
    out, _ = fn(EPS, op, Y, BETAS, generator=gen(7), **kw)
    mo = moments(out)
    assert math.isfinite(mo["obs"]) and not passes(mo, obs_tol)


def test_dds_large_gamma_is_exact_on_observed_k():
    out, _ = dds(EPS, OP, Y[:50], BETAS, 20, gen(8), gamma=1e5)
    assert moments(torch.cat([out] * 10))["obs"] < 1e-4


def test_soft_dds_step_is_detected():
    """DDS's noisy-branch step (I + gamma A^H A) x = x0_hat + gamma A^H y is soft: with gamma = 5 the
    output keeps ~1/6 of the last residual on observed k, which the exact-posterior check rejects."""
    fn, kw, obs_tol, _ = CASES["dds"]
    mo = moments(fn(EPS, OP, Y, BETAS, generator=gen(5), **dict(kw, gamma=5.0))[0])
    assert not passes(mo, obs_tol) and mo["obs"] > 1e-3, mo["obs"]


def test_any_generic_solver_and_seeds():
    for solver in ("dpm-solver++", "unipc", "heun"):
        out, nfe = ddnm(EPS, OP, Y[:64], BETAS, 10, gen(9), solver=solver)
        assert nfe == (19 if solver == "heun" else 10)
        assert moments(torch.cat([out] * 8))["obs"] < 1e-5
    out, _ = ccdf(EPS, OP, Y[:8], BETAS, 20, gen(9), t0=0.5, solver="dpm-solver++", dc="dds")
    assert out.shape == (8, H, W)
    a = dds(EPS, OP, Y[:4], BETAS, 10, gen(3))[0]
    assert torch.equal(a, dds(EPS, OP, Y[:4], BETAS, 10, gen(3))[0])


def test_multicoil_sense_data_consistency():
    """SENSE (no ``project``): the DDNM correction runs CG; A x must reproduce y."""
    A = MultiCoilMRI(two_smooth_maps(H, W), MASK)
    x = PR.sample(16, generator=gen(10))
    y = A.forward(x)
    for fn, tol in ((ddnm, 1e-3), (dds, 1e-3)):
        out, _ = fn(EPS, A, y, BETAS, 20, gen(11), cg_iters=20)
        assert ((A.forward(out) - y).norm() / y.norm()).item() < tol


def test_score_mri_ssos_per_coil():
    smaps = torch.ones(3, H, W, dtype=torch.complex64) / math.sqrt(3)
    y = MultiCoilMRI(smaps, MASK).forward(PR.sample(4, generator=gen(12)))
    img, nfe = score_mri_ssos(EPS, MASK, y, BETAS, 10, gen(13))
    assert img.shape == (4, H, W) and not img.is_complex() and nfe == 3 * 2 * 10


def test_bad_input():
    with pytest.raises(ValueError, match="generator"):
        ddnm(EPS, OP, Y[:2], BETAS, 10, None)
    with pytest.raises(ValueError, match="complex"):
        dds(EPS, OP, Y[:2].real, BETAS, 10, gen(0))
    with pytest.raises(ValueError, match="operator"):
        dps(EPS, object(), Y[:2], BETAS, 10, gen(0))
    with pytest.raises(ValueError, match="t0"):
        ccdf(EPS, OP, Y[:2], BETAS, 10, gen(0), t0=0.0)
    with pytest.raises(ValueError, match="pndm"):
        ccdf(EPS, OP, Y[:2], BETAS, 10, gen(0), solver="pndm")
    with pytest.raises(ValueError, match="steps"):
        score_mri(EPS, OP, Y[:2], BETAS, 0, gen(0))


# ------------------------------------------------------------------ convergence (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name,fn,kw,expected", [
    ("ddnm", ddnm, dict(steps=1000, eta=0.0), expected_ratio("ddim", 1000, eta=0.0)),
    ("dps", dps, dict(steps=1000), expected_ratio("ddim", 1000, eta=1.0)),
    ("score-mri", score_mri, dict(steps=1000, snr=0.0), expected_ratio("score", 1000)),
])
def test_variance_converges_to_exact_posterior(name, fn, kw, expected):
    """At N = 1000 the recursion's gap to the exact variance is 0.6% (DDNM update, eta = 0), 1.4%
    (DPS: DDPM-type, fixed_small variance) and 0.4% (reverse-diffusion predictor); the samples must
    follow it."""
    assert abs(expected.mean() - 1) < 0.015
    out, _ = fn(EPS, OP, Y, BETAS, generator=gen(14), **kw)
    assert_posterior(moments(out), CASES[name][2], expected)

