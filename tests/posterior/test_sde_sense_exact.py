"""Score-MRI (SENSE), HFS-SDE and SPIRiT-Diffusion against the exact posterior of the Gaussian prior
under multi-coil SENSE (issue 14 items 3-4).

Setting (ARCHITECTURE.md "The analytic prior"): 16x16 complex images, ``GaussianPrior`` p = 1.5, k0 = 1;
``MultiCoilMRI`` with 3 unit-magnitude maps of smooth non-integer phase and 4 of 16 columns (R = 4;
the geometry of ``test_vp_sense_exact``): A has rank 192 of 256 and is well conditioned on its range,
so the samplers' CG data step is an exact projection.  The posterior of noise-free y = A x is the
Gaussian N(m*, Sigma*) on the affine set {A x = y}; with the prior covariance C = F^H diag(lambda) F
and an orthonormal basis V of null(A) (dense, complex128):

    Sigma* = V (V^H C^-1 V)^-1 V^H,    m* = x_d - Sigma* C^-1 x_d,  x_d = A^+ y.

Corrector check: for samples x_s of any sampler, the error e = mean_s ||x_s - m*||^2 / tr(Sigma*) is 1
for exact posterior samples (bias^2 and excess variance add to it).  Its standard error is estimated
from the samples, se = std_s(||x_s - m*||^2) / (sqrt(n) tr Sigma*) (for exact samples
sqrt(tr Sigma*^2) / (sqrt(n) tr Sigma*) = 0.017 here at n = 100).  A Langevin corrector targets the
same marginal as the predictor, so with the exact score it may lower e but must not raise it:
e(PC) <= e(P) + 4 sqrt(se_P^2 + se_PC^2).
"""
import math

import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.hfs_process import HFSSDE
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior import (coil_projector, coil_score_from_image_prior, gaussian_hfs_score, hfs_sde,
                                score_mri, spirit_diffusion)
from tests.posterior.helpers import BETAS, CT, EPS, NPIX, PR, H, W, sense_geometry

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HFS = HFSSDE(acs=1)  # M_L = column 8, inside the mask
HFS_SCORE = gaussian_hfs_score(PR, HFS)
SMAPS, MASK, OP = sense_geometry(H, W, torch.complex64)
X_TRUE = PR.sample(1, generator=torch.Generator().manual_seed(1))[0]
Y1 = OP.forward(X_TRUE)
NS = 100

_I = torch.eye(NPIX, dtype=CT)
_AD = MultiCoilMRI(SMAPS.to(CT), MASK).forward(_I.reshape(NPIX, H, W)).reshape(NPIX, -1).T
_FD = fft2c(_I.reshape(NPIX, H, W)).reshape(NPIX, -1).T
_CINV = _FD.conj().T @ torch.diag(1 / PR.lam.reshape(-1).to(CT)) @ _FD
_U, _S, _VH = torch.linalg.svd(_AD)
_R = int((_S > 1e-10 * _S[0]).sum())
_V = _VH.conj().T[:, _R:]
_XD = _VH.conj().T[:, :_R] @ ((_U[:, :_R].conj().T @ Y1.reshape(-1).to(CT)) / _S[:_R])
POST_COV = _V @ torch.linalg.inv(_V.conj().T @ _CINV @ _V) @ _V.conj().T
POST_MEAN = _XD - POST_COV @ (_CINV @ _XD)
TRACE = float(POST_COV.diagonal().real.sum())


def gen(seed):
    return torch.Generator().manual_seed(seed)


def error(out):
    """(e, se): mean_s ||x_s - m*||^2 / tr Sigma* and its standard error (module docstring)."""
    d = (out.reshape(out.shape[0], -1).to(CT) - POST_MEAN).abs().pow(2).sum(1) / TRACE
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def test_setting_and_exact_posterior():
    assert _R == 192 and float(_S[_R - 1] / _S[0]) > 0.04  # well conditioned on its range
    assert float((_AD @ POST_MEAN - Y1.reshape(-1)).norm() / Y1.norm()) < 1e-10
    assert float((_AD @ POST_COV).abs().max()) < 1e-10  # the posterior lives on {A x = y}
    assert float(((_XD - POST_MEAN).norm() / POST_MEAN.norm())) > 0.05  # not the Euclidean projection


def run(method, steps, snr, n, seed=3, **kw):
    y = Y1.expand(n, *Y1.shape)
    if method == "score-mri":
        return score_mri(EPS, OP, y, BETAS, steps, gen(seed), snr=snr, **kw)[0]
    return hfs_sde(HFS_SCORE, OP, y, HFS, steps, gen(seed), snr=snr, **kw)[0]


def corrector_check(method, steps, n):
    """(e_P, e_PC, tolerance) for the predictor-only and the default-corrector sampler (module docstring)."""
    (ep, sp), (epc, spc) = error(run(method, steps, 0.0, n)), error(run(method, steps, 0.16, n))
    return ep, epc, 4 * math.hypot(sp, spc)


@pytest.mark.parametrize("method", ["score-mri", "hfs-sde"])
def test_corrector_does_not_add_error_n100(method):
    """N = 100, n = 100 samples.  Measured e (P -> PC): Score-MRI 1.39 -> 1.29, HFS-SDE 1.53 -> 1.41
    (standard errors 0.03-0.05); a diverging or noise-adding corrector fails."""
    ep, epc, tol = corrector_check(method, 100, NS)
    assert epc <= ep + tol, (ep, epc, tol)
    assert ep < 1.7, ep  # the bias of N = 100 (step count and the Euclidean data step), not divergence


@pytest.mark.slow
@pytest.mark.parametrize("method", ["score-mri", "hfs-sde"])
def test_corrector_does_not_add_error_n1000(method):
    """N = 1000, n = 50 samples.  Measured e (P -> PC): Score-MRI 1.31 -> 1.11, HFS-SDE 1.40 -> 1.13
    (with dc_noise=False, data step onto the undiffused data: 1.36 -> 1.08 and 1.35 -> 1.08)."""
    ep, epc, tol = corrector_check(method, 1000, 50)
    assert epc <= ep + tol, (ep, epc, tol)


# ------------------------------------------------------------------ SPIRiT-Diffusion
# The SPIRiT setting of tests/posterior/test_hfs_spirit_diffusion.py: 4 coils with S_c = exp(2 pi i k_c w / W) / 2
# (coil c's k-space is the image's shifted by k_c columns), for which the kernel with taps 1/3 at offsets
# k_c' - k_c is exact (G S rho = S rho); columns 0 and 8 sampled, so the coils see 8 of the image's 16
# k-space columns and the other 8 are left to the prior.
C4 = 4
_w = torch.arange(W) - W // 2
SP_MAPS = (torch.stack([torch.exp(2j * math.pi * k * _w / W).expand(H, W) for k in range(C4)]) / 2).to(torch.complex64)
SP_KERNEL = torch.zeros(C4, C4, 7, 7, dtype=torch.complex64)
for _c in range(C4):
    for _d in range(C4):
        if _c != _d:
            SP_KERNEL[_c, _d, 3, 3 + _d - _c] = 1 / (C4 - 1)
SP_MASK = torch.zeros(1, W, dtype=torch.bool)
SP_MASK[:, ::8] = True
SP_PR = GaussianPrior((H, W))
SP_RHO = SP_PR.sample(4, generator=gen(20))
SP_Y = MultiCoilMRI(SP_MAPS, SP_MASK).forward(SP_RHO)


def image_score(rho, sigma):
    """Exact VE score of the Gaussian image prior at noise level sigma."""
    return ifft2c(-fft2c(rho) / (SP_PR.lam.float() + torch.as_tensor(sigma).float() ** 2))


LIFTED = coil_score_from_image_prior(image_score, SP_MAPS)
SIGMAS = dict(sigma_min=0.01, sigma_max=50.0, nfe_per_score=1)


def test_spirit_iterates_stay_in_the_range_of_the_maps():
    """With a lifted image prior (in_range=True) every iterate x satisfies x = S S^H x to float32
    round-off (measured 2e-7); without the range projection the per-coil data step leaves components
    outside range(S) that the lifted score never removes (measured 0.3 relative)."""
    P = coil_projector(SP_MAPS)
    for in_range, corr in ((True, 1), (True, 0), (False, 0)):
        worst, calls = [0.0], [0]

        def inspect(i, x):
            calls[0] += 1
            worst[0] = max(worst[0], float(((x - P(x)).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).max()))
        out, nfe = spirit_diffusion(LIFTED, SP_MASK, SP_Y, SP_KERNEL, SP_MAPS, 20, gen(1), snr=0.1, n_corrector=corr,
                                    in_range=in_range, callback=inspect, **SIGMAS)
        assert calls[0] == 1 + 20 * (corr + 1) + 1 and nfe == 20 * (corr + 1)
        if in_range:
            assert worst[0] < 1e-5, worst[0]
        else:
            assert worst[0] > 1e-2, worst[0]


_seen = torch.zeros(W, dtype=torch.bool)
for _k in range(C4):
    _seen |= torch.roll(SP_MASK[0], -_k)
SP_UNSEEN = (~_seen).expand(H, W)  # image k-space columns no coil measures


def spirit_variance(steps, eta, kernel):
    """Output power on the image k-space columns no coil sees / its prior variance (exact posterior: 1)."""
    out, _ = spirit_diffusion(LIFTED, SP_MASK, SP_Y[:1].expand(16, C4, H, W), kernel, SP_MAPS, steps, gen(2),
                              snr=0.0, eta=eta, **SIGMAS)
    lam = SP_PR.lam.float().expand(H, W)
    return float((fft2c(out).abs() ** 2)[:, SP_UNSEEN].sum(1).mean() / lam[SP_UNSEEN].sum())


def test_spirit_drift_has_its_time_step():
    """A kernel 10% too weak (G = 0.9 G_exact, as Tikhonov-regularised calibration shrinks it) makes the
    drift pull consistent images towards 0 (Psi S rho = 0.01 S rho).  On the k-space columns no coil
    measures the exact posterior is the prior (power ratio 1, standard error ``se`` of 16 samples).
    With dt = 1/N the drift's total pull does not grow with N: the ratio approaches 1 as N grows
    (measured 1.645 at N = 20, 1.001 at N = 200); applied once per step as the repo's ``discretize``
    does (eta -> eta N here) it shrinks the output (measured 0.60 at N = 200) and fails."""
    weak = 0.9 * SP_KERNEL
    lam = SP_PR.lam.expand(H, W)[SP_UNSEEN]
    se = float((lam ** 2).sum().sqrt() / lam.sum()) / 4  # chi-square spread of the ratio, 16 samples
    r20, r200 = spirit_variance(20, 0.45, weak), spirit_variance(200, 0.45, weak)
    assert abs(r200 - 1) < 4 * se and abs(r200 - 1) < abs(r20 - 1), (r20, r200, se)
    no_dt = spirit_variance(200, 0.45 * 200, weak)
    assert abs(no_dt - 1) > 4 * se, (no_dt, se)
