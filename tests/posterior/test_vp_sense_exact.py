"""DDS, DDNM, DiffPIR and CCDF against the exact posterior of the Gaussian prior under multi-coil SENSE.

Setting (ARCHITECTURE.md "The analytic prior"): 16x16 complex128 images, ``GaussianPrior`` p = 1.5,
k0 = 1; ``MultiCoilMRI`` with 3 unit-magnitude coil maps of smooth non-integer phase and 4 of 16
columns (R = 4): A has rank 192 of 256, so the posterior of noise-free y = A x is a Gaussian on the
affine set {A x = y} (64-dim null space), not diagonal in k-space.  These maps keep A well
conditioned on its range (cond 23), so CG reaches round-off in 20 steps and the samplers' data step
equals A^+ exactly.  Dense (complex128): exact posterior mean m* = W (A W)^+ y, W = Sigma^(1/2).

With the exact eps (linear in x) and an exact projection each sampler is an affine recursion, so
the mean of its output is computed exactly here (``sampler_mean``: 5 lines per update).  Checks:
- data consistency of every sample: ||A x - y|| / ||y|| <= 1e-9 (hard data step; round-off);
- with x_T = 0 and eta = 0 the sampler's output *is* that mean (to round-off, 1e-9);
- sample mean vs that recursion mean within 3 sigma of the sample mean's own spread (``floor``);
- the recursion mean vs m*: the reference DDNM/DDS update converges to m* as N grows (10.3% at
  50 steps, 6.6% at 200, 3.3% at 1000), while Song's DDIM with eps re-derived from the corrected x0
  (what a generic solver with a dc hook does) stays 15% off at any N;
- a soft data step (DDS gamma = 5, the old default) or the generic-solver update fails the checks.
"""
import math

import pytest
import torch

from medrecon.physics.fft import fft2c
from medrecon.posterior import ccdf, ddnm, dds, diffpir
from medrecon.posterior.ddnm import ddnm_dc
from medrecon.sample import sample
from tests.posterior.helpers import BETAS, CT, EPS, NPIX, PR, H, W, sense_geometry

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ACP = torch.cumprod(1 - BETAS.float(), 0).double()
SMAPS, MASK, OP = sense_geometry(H, W)
X_TRUE = PR.sample(1, generator=torch.Generator().manual_seed(1), dtype=CT)[0]
Y1 = OP.forward(X_TRUE)
N = 100
Y = Y1.expand(N, *Y1.shape)

# dense operators (image vectors of length 256)
_I = torch.eye(NPIX, dtype=CT)
AD = OP.forward(_I.reshape(NPIX, H, W)).reshape(NPIX, -1).T
FD = fft2c(_I.reshape(NPIX, H, W)).reshape(NPIX, -1).T
LAM = PR.lam.reshape(-1).to(CT)
WH = FD.conj().T @ torch.diag(LAM.sqrt()) @ FD
APINV = torch.linalg.pinv(AD, rtol=1e-10)
POST_MEAN = WH @ (torch.linalg.pinv(AD @ WH, rtol=1e-10) @ Y1.reshape(-1))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sampler_mean(steps, eta, update="net", start=0, m0=None):
    """Exact output mean of the affine recursion x0 = P C0 x + A^+ y (P = I - A^+ A, C0 the exact
    denoiser) followed by ``update``: "net" x' = sqrt(ap) x0 + sqrt((1-ap)(1-eta^2)) C1 x (the network's
    eps C1 x; ddim_dc), "effective" the same with eps re-derived from x0 (DiffPIR), "song" DDIM(eta)
    with re-derived eps (medrecon.solvers.ddim with a dc hook).  Noise has mean 0."""
    ts = [int(t) for t in torch.arange(steps - 1, -1, -1) * (1000 // steps)] + [-1]
    m = torch.zeros(NPIX, dtype=CT) if m0 is None else m0.reshape(-1).to(CT)
    b0 = APINV @ Y1.reshape(-1)
    for t, tp in zip(ts[start:-1], ts[start + 1:]):
        a, ap = float(ACP[t]), (float(ACP[tp]) if tp >= 0 else 1.0)
        v = a * LAM + 1 - a
        k = FD @ m
        x0 = m_ = FD.conj().T @ (math.sqrt(a) * LAM / v * k)
        x0 = x0 - APINV @ (AD @ m_) + b0
        if ap >= 1:
            m = x0
            continue
        eps = FD.conj().T @ (math.sqrt(1 - a) / v * k)
        if update != "net":
            eps = (m - math.sqrt(a) * x0) / math.sqrt(1 - a)
        s2 = eta ** 2 * (1 - ap) / (1 - a) * (1 - a / ap) if update == "song" else (1 - ap) * eta ** 2
        m = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - s2, 0.0)) * eps
    return m


def rel(a, b):
    return float((a.reshape(-1) - b.reshape(-1)).norm() / POST_MEAN.norm())


def check(out, expected_mean):
    """(max data residual, |sample mean - expected| / |m*|, 3-sigma floor of the sample mean)."""
    dc = float(((OP.forward(out) - Y).flatten(1).norm(dim=1) / Y1.norm()).max())
    mean = out.mean(0)
    floor = 3 * math.sqrt(float((out - mean).abs().pow(2).sum()) / (N - 1) / N) / float(POST_MEAN.norm())
    return dc, rel(mean, expected_mean), floor


def test_setting_is_not_diagonal_and_the_posterior_is_exact():
    assert int(torch.linalg.matrix_rank(AD)) == 192
    assert rel(AD @ POST_MEAN, Y1) < 1e-12  # m* is data consistent
    # the SENSE null space mixes k-space samples: the Euclidean projection is not the prior-weighted one
    assert rel(POST_MEAN, APINV @ Y1.reshape(-1)) > 0.1


def test_reference_update_approaches_the_exact_posterior_mean():
    """Deterministic (no sampling): the network's-eps update gets closer to m* with N, the
    re-derived-eps update does not."""
    ref = [rel(sampler_mean(n, 0.85), POST_MEAN) for n in (50, 200)]
    song = [rel(sampler_mean(n, 0.85, "song"), POST_MEAN) for n in (50, 200)]
    assert ref[0] > ref[1] and ref[0] < 0.11 and ref[1] < 0.07, ref  # 0.103, 0.066
    assert min(song) > 0.15, song  # 0.156, 0.153


@pytest.mark.slow
def test_reference_update_converges_to_the_exact_posterior_mean():
    assert rel(sampler_mean(1000, 0.85), POST_MEAN) < 0.035  # 0.033
    assert rel(sampler_mean(1000, 0.0), POST_MEAN) < 0.03  # eta = 0 (deterministic DDIM): 0.026
    assert rel(sampler_mean(1000, 0.85, "song"), POST_MEAN) > 0.15  # 0.152


@pytest.mark.parametrize("name,fn,kw,update", [
    ("ddnm", ddnm, dict(eta=0.0), "net"),
    ("dds", dds, dict(eta=0.0), "net"),
    ("diffpir", diffpir, dict(zeta=0.0), "effective"),
])
def test_noise_free_run_is_the_exact_mean(name, fn, kw, update):
    """The samplers are affine in (x_T, z): from x_T = 0 with no noise they return their exact mean."""
    out, _ = fn(EPS, OP, Y1[None], BETAS, 50, gen(0), cg_iters=20, x_T=torch.zeros(1, H, W, dtype=CT), **kw)
    assert rel(out, sampler_mean(50, 0.0, update)) < 1e-9


CASES = {  # sampler, kwargs (50 NFE each), expected mean
    "ddnm": (ddnm, dict(steps=50, cg_iters=20), lambda: sampler_mean(50, 0.85)),
    "dds": (dds, dict(steps=50, cg_iters=20), lambda: sampler_mean(50, 0.85)),
    "diffpir": (diffpir, dict(steps=50, cg_iters=20, zeta=0.3),
                lambda: sampler_mean(50, math.sqrt(0.3), "effective")),
    # CCDF: x_init = A^H y diffused to grid index 50 of 100 (t = 490), the last 50 steps
    "ccdf": (ccdf, dict(steps=100, t0=0.5, cg_iters=20),
             lambda: sampler_mean(100, 0.85, start=50, m0=math.sqrt(float(ACP[490])) * OP.adjoint(Y1))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_mean_and_data_consistency_under_sense(name):
    fn, kw, expected = CASES[name]
    out, nfe = fn(EPS, OP, Y, BETAS, generator=gen(5), **kw)
    assert out.shape == (N, H, W) and out.dtype == CT and nfe == 50
    m_rec = expected()
    dc, err, floor = check(out, m_rec)
    assert dc < 1e-9, dc
    assert err < floor, (err, floor)
    # and so the sample mean is as close to the exact posterior mean as the method's recursion is
    assert rel(out.mean(0), POST_MEAN) < rel(m_rec, POST_MEAN) + floor


def test_soft_data_step_fails():
    """The old DDS default (gamma = 5: (I + 5 A^H A) x = x0_hat + 5 A^H y) leaves a residual on every
    sample and moves the mean: both the data-consistency and the exact-mean checks reject it."""
    out, _ = dds(EPS, OP, Y, BETAS, 50, gen(5), cg_iters=20, gamma=5.0)
    assert check(out, sampler_mean(50, 0.85))[0] > 1e-3
    zero = torch.zeros(1, H, W, dtype=CT)
    soft, _ = dds(EPS, OP, Y1[None], BETAS, 50, gen(0), cg_iters=20, gamma=5.0, eta=0.0, x_T=zero)
    assert rel(soft, sampler_mean(50, 0.0)) > 1e-3


def test_generic_solver_update_is_detected():
    """Song's DDIM through a dc hook (eps re-derived from the corrected x0, the old update of
    dds/ddnm/ccdf): data consistent, but its mean is the "song" recursion, not the reference one."""
    zero = torch.zeros(1, H, W, dtype=CT)
    out = sample(EPS, zero, "ddim", 50, BETAS, dc=ddnm_dc(OP, Y1[None], 20), generator=gen(7), eta=0.0)
    assert rel(out, sampler_mean(50, 0.0, "song")) < 1e-9
    assert rel(out, sampler_mean(50, 0.0)) > 0.05  # 0.104 from the reference update's mean
