"""Hybrid Score-MRI (per-coil sampling + SENSE Kaczmarz steps) on the analytic Gaussian prior.

Setting as ``test_posterior`` (8x8, p = 1.5, 4 of 8 columns, n = 1000 samples), with 3 coils and
uniform maps S_c = 1/sqrt(3) (unit norm over coils).  Each coil image is sampled with the prior
of spectrum lambda from y_c = M F S_c rho; the SENSE combination S^H x = sum_c x_c / sqrt(3) then has
observed k equal y and, on unobserved k, mean 0 and variance 3 lambda r / 3 = lambda r, r the
score-mri recursion's ratio: exactly the single-coil posterior test of rho.  The SENSE steps
(m_steps = 10) touch only observed k there (A^H r is in the range of F^H M), which the next
per-coil DC re-projects, so they must not disturb it.  The step itself is checked against its
closed form with non-uniform maps; wrong maps fail the posterior test.
"""
import math

import pytest
import torch

from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.score_mri import score_mri_hybrid, sense_kaczmarz_step
from tests.posterior.test_posterior import (BETAS, EPS, MASK, PR, X_TRUE, H, W, assert_posterior, expected_ratio,
                                       moments, passes)

C = 3
N = 1000
UNIFORM = torch.ones(C, H, W, dtype=torch.complex64) / math.sqrt(C)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _smooth_maps():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    s = torch.stack([torch.exp(-(xx - 0.6) ** 2 + 0.4j * yy), torch.exp(-(xx + 0.6) ** 2 - 0.3j * yy),
                     torch.exp(-(yy - 0.5) ** 2 + 0.2j * xx)])
    return (s / (s.abs() ** 2).sum(0).sqrt()).to(torch.complex64)


def _y(smaps):
    return MultiCoilMRI(smaps, MASK).forward(X_TRUE[0]).expand(N, C, H, W)


def test_hybrid_against_exact_posterior():
    out, nfe = score_mri_hybrid(EPS, MASK, UNIFORM, _y(UNIFORM), BETAS, 50, torch.Generator().manual_seed(21),
                                m_steps=10, snr=0.0)
    assert out.shape == (N, H, W) and out.is_complex() and nfe == 2 * 50 * C
    assert_posterior(moments(out), 1e-5, expected_ratio("score", 50))


def test_hybrid_with_wrong_maps_fails():
    """Data from smooth non-uniform maps, sampled and combined with the uniform ones: fails."""
    out, _ = score_mri_hybrid(EPS, MASK, UNIFORM, _y(_smooth_maps()), BETAS, 20, torch.Generator().manual_seed(22),
                              m_steps=5, snr=0.0)
    mo = moments(out)
    assert math.isfinite(mo["obs"]) and not passes(mo, 1e-5)


def test_sense_kaczmarz_step_closed_form():
    """With S^H S = 1: S^H x' = rho + lam A^H (y - A rho), rho = S^H x (a Landweber step), which for
    lam = 1 (||A|| <= 1) lowers the SENSE residual; the repo's unweighted update (A^H r added to every
    coil image) does not give that combined image."""
    smaps = _smooth_maps()
    A = MultiCoilMRI(smaps, MASK)
    g = torch.Generator().manual_seed(23)
    x = torch.randn(4, C, H, W, dtype=torch.complex64, generator=g)
    y = A.forward(PR.sample(4, generator=g))
    rho = (smaps.conj() * x).sum(-3)
    for lam in (1.0, 0.2):
        new = sense_kaczmarz_step(x, y, A, lam)
        want = rho + lam * A.adjoint(y - A.forward(rho))
        got = (smaps.conj() * new).sum(-3)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        unweighted = x + lam * A.adjoint(y - A.forward(rho)).unsqueeze(-3)
        assert not torch.allclose((smaps.conj() * unweighted).sum(-3), want, atol=1e-2)
    res = lambda im: (y - A.forward(im)).norm()  # noqa: E731
    assert res((smaps.conj() * sense_kaczmarz_step(x, y, A, 1.0)).sum(-3)) < res(rho)


def test_hybrid_bad_input():
    y = _y(UNIFORM)[:2]
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="smaps"):
        score_mri_hybrid(EPS, MASK, UNIFORM[:2], y, BETAS, 10, g)
    with pytest.raises(ValueError, match="m_steps"):
        score_mri_hybrid(EPS, MASK, UNIFORM, y, BETAS, 10, g, m_steps=0)
    with pytest.raises(ValueError, match="lam_start"):
        score_mri_hybrid(EPS, MASK, UNIFORM, y, BETAS, 10, g, lam_start=-1.0)

