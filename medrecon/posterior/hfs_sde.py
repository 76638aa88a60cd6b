"""HFS-SDE posterior sampling (Cao, Cui et al., IEEE TMI 2024; repo Aboriginer/HFS-SDE, ``sde_lib.py::HFS_SDE``
reverse ``sde`` and ``sampling.py::get_pc_sampler`` / ``LangevinCorrector``; ../shared/METHODS.md "HFS-SDE").

The forward process lives in ``medrecon.models.hfs_process`` (`HFSSDE`, re-exported here; the training
loss needs it and models/ must not import medrecon core): noise only on the high frequencies
Mhat = F^-1 (1 - M_L) F, beta(t) = 0.1 + t (20 - 0.1), x_t = x_0 + (e^c - 1) Mhat x_0 + std Mhat z.

Sampler (predictor-corrector, the repo's defaults: ``euler_maruyama`` predictor, ``langevin``
corrector, one corrector step, time grid linspace(1, eps = 1e-3, N), dt = 1/N; the last predictor
step is Tweedie's E[x0 | x_t] (``tweedie=True``, Song et al.'s "denoise" step), else x_mean of the
Euler-Maruyama step as the repo returns it):

- start: x_T = A^H (M_L y) + Mhat z -- the low frequencies from the data, only the high ones noise;
- Langevin corrector at t_i: x <- x + e (s - g_c) + sqrt(2 e) Mhat z,  s = Mhat score(x, std_i),
  e = 2 alpha_i (snr ||z|| / ||s||)^2 with alpha_i = 1 - beta(t_i) / 1000 (the repo's table
  1 - beta_i / num_scales) and ||z|| the norm of the unprojected noise, as in the repo;
- Euler-Maruyama predictor: x <- x + [1/2 beta Mhat x + beta (s - g_p)] dt + sqrt(beta dt) Mhat z.
  At the last step (t = eps) this multiplies the high-frequency residual by 1 + beta dt (1/2 - 1/v_t),
  v_t its variance: for real images v_t ~ std^2 = 1e-4, and with N = 100 (beta dt = 1.2e-3) that is
  about -11, which is why N = 100 diverged; Tweedie's step, x + Mhat (x + std^2 s) / e^c - Mhat x,
  is the posterior mean instead and never overshoots.
  (This is the repo's reverse-diffusion step for HFS: its ``RSDE.sde``; the ``reverse_diffusion``
  predictor's ``RSDE.discretize`` raises NotImplementedError for HFS_SDE.)

Data consistency (``dc``):

- ``"hard"`` (default): after every corrector and predictor update x is projected onto A x = y_t
  (``operator.project`` -- k-space replacement for single-coil Cartesian -- else CG on A^H A, as
  ``score_mri``), with y_t the measurement diffused like x: y on the low frequencies,
  e^c y + std A z on the measured high ones (``dc_noise=False``: y itself); the returned x_mean is
  projected onto y.  The medrecon convention (Score-MRI) and what issue 5 asks for.  The rescaled
  gradients below vanish on a projected state and are not used.
- ``"gradient"``: the repo's soft data consistency only: g = A^H (A x - y) rescaled per image to
  ``mse`` ||s|| / ||g|| in the predictor (repo default 2.5) and ``corrector_mse`` ||s|| / ||g|| in the
  corrector (repo ``configs/hfssde``: 0.1); no projection, so the output is only near the data.
  Users of the repo tune ``snr`` / ``mse`` / ``corrector_mse`` per data set (its issues #10, #11).

Deviations from the repo, all stated: the score is projected by Mhat in the predictor too (the
repo leaves that line commented out; the reverse SDE of the forward process above has G G^T =
beta Mhat, and with hard DC and M_L inside the sampling mask it makes no difference); step sizes
and gradient norms are per image (the repo: batch means / whole-batch norms, identical for its
batch size 1); noise is circular complex CN(0, I) on complex images (the repo: N(0, 1) per
real/imag channel); a zero score or zero DC gradient gives no move instead of NaN.
``N = 100`` is the repo's "accelerated" setting (``snr`` 0.32 there).

The repo's data step is the gradient one only (``sampling.py:298-324`` in the corrector,
``sde_lib.py:402-410`` in the predictor; ``dc="gradient"`` here); the hard default is the stated
departure above.  Corrector check (issue 14; tests/posterior/test_sde_sense_exact.py, SENSE on the
analytic Gaussian prior, exact posterior, e = E||x - m*||^2 / tr Sigma*): predictor-only -> with the
corrector at snr 0.16, N = 100: 1.53 -> 1.41; N = 1000: 1.40 -> 1.13 (``dc_noise=False``:
1.35 -> 1.08); the corrector lowers the error.

``score_fn(x, sigma)``: the HFS score at noise level ``sigma`` = std(t) (a 0-d tensor on x's device)
for complex images ``x [..., H, W]`` -- e.g. ``medrecon.models.hfs_process.hfs_score_fn(model)`` under
``torch.no_grad()``.  NFE = steps * (n_corrector + 1) per image.
"""
from __future__ import annotations

import torch

from medrecon.models.hfs_process import HFSSDE
from medrecon.physics.fft import fft2c, ifft2c

from .common import DC_MODES, check_common, langevin, noise_like, prox, soft_dc

__all__ = ["hfs_sde", "HFSSDE", "gaussian_hfs_score"]

_MAX_STEPS = 100_000


def check_low_frequencies(operator, sde: HFSSDE, shape) -> None:
    """The low-frequency block must be sampled: HFS-SDE takes it from the data (operators with ``mask``)."""
    mask = getattr(operator, "mask", None)
    if mask is None:
        return
    low = sde.low_mask(shape, device=mask.device)
    if not bool((mask.bool() | ~low).all()):
        what = f"{sde.acs} central columns" if sde.region == "lines" else f"central {sde.acs}x{sde.acs} block"
        raise ValueError(f"mask: HFS-SDE fixes the low frequencies ({what}, the M_L of {sde!r}) from the data, "
                         f"but the sampling mask does not cover them; use a mask whose ACS region contains M_L "
                         f"or an HFSSDE with a smaller acs")


def hfs_sde(score_fn, operator, y: torch.Tensor, sde: HFSSDE | None = None, steps: int = 1000,
            generator: torch.Generator | None = None, *, snr: float = 0.16, n_corrector: int = 1,
            mse: float = 2.5, corrector_mse: float = 0.1, dc: str = "hard", dc_noise: bool = True,
            eps: float = 1e-3, cg_iters: int = 10, x_T: torch.Tensor | None = None,
            tweedie: bool = True, callback=None) -> tuple[torch.Tensor, int]:
    """HFS-SDE PC sample(s) for ``y = A x``: ``(x0, nfe)`` (module docstring).  ``sde`` defaults to
    ``HFSSDE()`` (acs 16, the repo's training default); it must be the one the prior was trained on.
    ``callback(i, x)``: called with the state after each step ``i`` (the Tweedie estimate at the last)."""
    sde = HFSSDE() if sde is None else sde
    if not isinstance(sde, HFSSDE):
        raise ValueError(f"sde: expected a medrecon.models.hfs_process.HFSSDE, got {type(sde).__name__}")
    check_common(operator, y, steps, _MAX_STEPS, generator)
    if dc not in DC_MODES:
        raise ValueError(f"dc: expected one of {DC_MODES}, got {dc!r}")
    if snr < 0 or n_corrector < 0 or mse < 0 or corrector_mse < 0:
        raise ValueError(f"snr, n_corrector, mse, corrector_mse: expected >= 0, got {snr}, {n_corrector}, "
                         f"{mse}, {corrector_mse}")
    if not 0 < eps < 1:
        raise ValueError(f"eps: expected 0 < eps < 1, got {eps}")
    aty = operator.adjoint(y)
    shape = tuple(aty.shape[-2:])
    check_low_frequencies(operator, sde, shape)
    if tuple(y.shape[-2:]) != shape:
        raise ValueError(f"y: expected k-space ending in the image size {shape}, got {tuple(y.shape)}")
    low_k = sde.low_mask(shape, device=y.device)
    project = getattr(operator, "project", None)
    hp = sde.high_pass

    def project_to(x, c=None, std=None):
        """Hard DC onto y_t (y diffused to (c, std) on the high frequencies; None: y)."""
        y_t = y
        if c is not None and dc_noise:
            y_t = torch.where(low_k, y, c * y + std * operator.forward(noise_like(x, generator)))
        return project(x, y_t) if project is not None else prox(operator, y_t, x, 0.0, cg_iters)

    n = int(steps)
    ts = torch.linspace(1.0, eps, n, dtype=torch.float64)
    dt = 1.0 / n
    beta = sde.beta(ts)
    c_next = sde.log_mean_coeff(torch.cat([ts[1:], torch.zeros(1, dtype=torch.float64)])).exp()
    std_next = sde.std(torch.cat([ts[1:], torch.zeros(1, dtype=torch.float64)]))
    sig = sde.std(ts).to(device=y.device, dtype=aty.real.dtype)  # one host-to-device copy

    if x_T is None:
        x = operator.adjoint(torch.where(low_k, y, torch.zeros_like(y))) + hp(noise_like(aty, generator))
    else:
        x = x_T.to(aty.dtype)
    hard = dc == "hard"
    if hard:
        x = project_to(x, float(sde.log_mean_coeff(1.0).exp()), float(sde.std(1.0)))
    x_mean = x
    for i in range(n):
        b = float(beta[i])
        alpha = 1.0 - b / 1000.0
        c_i, std_i = float(sde.log_mean_coeff(ts[i]).exp()), float(sde.std(ts[i]))
        for _ in range(n_corrector):
            s = hp(score_fn(x, sig[i]))
            z = noise_like(x, generator)
            x = langevin(x, s, z, snr, alpha=alpha, grad=None if hard else operator.normal(x) - aty,
                         weight=corrector_mse, project=hp)
            if hard:
                x = project_to(x, c_i, std_i)
        s = hp(score_fn(x, sig[i]))
        if tweedie and i == n - 1:  # E[x0 | x_t]: low frequencies as they are, high ones (x + std^2 s) / e^c
            x_mean = x - hp(x) + hp(x + std_i ** 2 * s) / c_i
            if callback is not None:
                callback(i, x_mean)
            break
        drift = soft_dc(s, None if hard else operator.normal(x) - aty, mse)
        x_mean = x + (0.5 * b * hp(x) + b * drift) * dt
        x = x_mean + (b * dt) ** 0.5 * hp(noise_like(x, generator))
        if hard:
            x = project_to(x, float(c_next[i]), float(std_next[i]))
        if callback is not None:
            callback(i, x)
    out = project_to(x_mean) if hard else x_mean
    return out, n * (n_corrector + 1)


def gaussian_hfs_score(prior, sde: HFSSDE):
    """Exact score of the HFS marginal of a ``medrecon.gaussian_prior.GaussianPrior`` (analytic oracle).

    The prior is diagonal in k-space with variances lambda; at noise level sigma = std(t) the low
    frequencies keep variance lambda and the high ones have e^{2c} lambda + sigma^2 =
    (1 - sigma^2) lambda + sigma^2, so F s = -F x / v per frequency.  ``score_fn(x, sigma)``, sigma a
    scalar or one value per leading item of x [B, H, W]."""
    low = sde.low_mask(prior.shape)

    def score_fn(x: torch.Tensor, sigma) -> torch.Tensor:
        lam = prior.lam.to(device=x.device)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device) ** 2
        s2 = s2.reshape(s2.shape + (1,) * 2) if s2.ndim else s2
        v = torch.where(low.to(x.device), lam, (1 - s2) * lam + s2)
        return ifft2c(-fft2c(x) / v.to(x.real.dtype))
    return score_fn
