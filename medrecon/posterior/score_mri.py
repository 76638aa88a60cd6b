"""Score-MRI (Chung & Ye, MedIA 2022; repo HJ-harry/score-MRI ``sampling.py::get_pc_fouriercs_*``).

Predictor-corrector sampling (Song et al., ICLR 2021) with hard data consistency after
every predictor and corrector step, here in the discrete VP formulation on the
training betas (N = ``steps`` strided steps, beta_i = 1 - abar_t / abar_prev):

- Langevin corrector at t: eps_step = 2 alpha_i (snr ||z|| / ||score||)^2, alpha_i = 1 - beta_i (per image,
  as Song et al.'s LangevinCorrector),
  x <- x + eps_step score + sqrt(2 eps_step) z,  score = -eps_fn(x, t) / sqrt(1 - abar_t);
- reverse-diffusion predictor: x <- (2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z;
- data consistency at noise level abar: x <- x + A^+ (y_t - A x), y_t = sqrt(abar) y + sqrt(1 - abar) A z
  (the measurement diffused like x, Song et al. ICLR 2022; ``dc_noise=False`` uses sqrt(abar) y;
  the VE reference code, alpha = 1, replaces with y itself).  A^+ is ``operator.project`` for
  single-coil Cartesian (k-space replacement), else CG (SENSE).
Corrector then predictor per step (Song et al.'s order); 1 + n_corrector network calls per step.
The final x_mean (no noise on the last step) is returned.

Reference data step: HJ-harry/score-MRI ``sampling.py:316-323`` (``get_pc_fouriercs_fast``),
``374-377`` (``_RI``), ``435-438`` (``_RI_PI_SSOS``), ``527-530`` (``_RI_coil_SENSE``): replacement with
the clean measurement Fy on the VE SDE, whose x_t = x0 + sigma z has mean y on the data -- the VP
analogue is ``dc_noise=False`` (sqrt(abar) y).  ``dc_noise=True`` (the default, Song et al. ICLR 2022)
is a stated departure; measured (issue 14): SENSE on the analytic Gaussian prior
(tests/posterior/test_sde_sense_exact.py, exact posterior, e = E||x - m*||^2 / tr Sigma*), N = 1000,
predictor-only -> with corrector: dc_noise True 1.31 -> 1.11, False 1.36 -> 1.08 (se 0.04-0.06; the
corrector at snr 0.16 lowers the error in both); validation slice (simulator seed 1500, 8x
equispaced, brain128-vp, variant sense, N = 100): True 21.68 dB, False 21.77 dB.  On an
ill-conditioned SENSE geometry (4 smooth coils, R = 4, smallest singular value^2 of A 1e-6) the
corrector doubles the error at N = 1000 with either choice (relative MSE 0.16 -> 0.33, clean y
0.14 -> 0.35), so y_t is not the cause; with ``cg_iters=100`` both drop (0.002 -> 0.022): the
CG data step (cond(A^H A) 1e6 there) leaves the corrector's noise in weakly measured directions.

Variants: ``real_imag=True`` runs the real and imaginary parts as two real images through a real-valued
prior (eps_fn receives real [2B, H, W]: real parts then imaginary parts; 2x the NFE), DC on the complex
image.  ``score_mri_ssos`` reconstructs each coil with A = M F and combines by root-sum-of-squares
(x C coils NFE).  ``score_mri_hybrid`` is the paper's hybrid variant (repo
``get_pc_fouriercs_RI_coil_SENSE``): the per-coil sampling of ``score_mri_ssos`` plus, every
``m_steps`` steps, one SENSE Kaczmarz (Landweber) step on the coil-combined image that couples the
coils (see its docstring).  Not implemented: the VE-SDE formulation of the paper (sigma_max 378).
"""
from __future__ import annotations

import torch

from medrecon.physics.coils import rss
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI, check_mask
from medrecon.sample import timesteps_for
from medrecon.solvers.base import strided_steps

from .common import alphas_cumprod, check_common, langevin, noise_like, prox, sqrt

__all__ = ["score_mri", "score_mri_ssos", "score_mri_hybrid", "sense_kaczmarz_step"]


def score_mri(eps_fn, operator, y: torch.Tensor, betas, steps: int = 1000, generator: torch.Generator | None = None,
              *, snr: float = 0.16, n_corrector: int = 1, real_imag: bool = False, dc_noise: bool = True,
              cg_iters: int = 10, x_T=None, hook=None, callback=None) -> tuple[torch.Tensor, int]:
    """Score-MRI PC sample(s) for noise-free ``y = A x``: ``(x0, nfe)`` (nfe per image; see module doc).
    ``hook(i, x, abar)``: called with the complex state after step ``i`` (its noise level abar) for
    every step but the last; returns the state to continue from (``score_mri_hybrid``'s SENSE step).
    ``callback(i, x)``: called with the complex state after each step ``i`` (after ``hook``)."""
    acp = alphas_cumprod(betas)
    n_train = len(acp)
    check_common(operator, y, steps, n_train, generator)
    if snr < 0 or n_corrector < 0:
        raise ValueError(f"snr, n_corrector: expected >= 0, got {snr}, {n_corrector}")
    ref = operator.adjoint(y)
    shape = (2, *ref.shape) if real_imag else ref.shape
    like = ref.real if real_imag else ref  # dtype and device of the state
    project = getattr(operator, "project", None)

    def randn():
        return noise_like(like, generator, shape)

    def cplx(s):
        return torch.complex(s[0], s[1]) if real_imag else s

    def state(c):
        return torch.stack([c.real, c.imag]) if real_imag else c

    def call(s, tt):  # eps in the state representation
        if not real_imag:
            return eps_fn(s, tt)
        return eps_fn(s.reshape(-1, *s.shape[-2:]), tt).reshape(s.shape)

    def dc(s, a, z=None):
        y_t = sqrt(a) * y if z is None else sqrt(a) * y + sqrt(1 - a) * operator.forward(cplx(z))
        c = cplx(s)
        c = project(c, y_t) if project is not None else prox(operator, y_t, c, 0.0, cg_iters)
        return state(c)

    def dc_z(s, a):
        return dc(s, a, randn() if dc_noise and a < 1 else None)

    x = randn() if x_T is None else state(x_T)
    ts = timesteps_for("ddpm", int(steps), n_train)
    x = dc_z(x, float(acp[int(ts[0])]))
    calls = 0
    n = len(ts)
    for i, _, tt, a, ap in strided_steps(ts, acp, y.device):
        beta = 1.0 - a / ap
        for _ in range(n_corrector):
            score = -call(x, tt) / sqrt(1 - a)
            x = dc_z(langevin(x, score, randn(), snr, alpha=1 - beta), a)
        score = -call(x, tt) / sqrt(1 - a)
        calls += n_corrector + 1
        x_mean = (2 - sqrt(1 - beta)) * x + beta * score
        x = dc_z(x_mean + sqrt(beta) * randn(), ap)
        if hook is not None and i < n - 1:
            x = state(hook(i, cplx(x), ap))
        if callback is not None:
            callback(i, cplx(x))
    return cplx(dc(x_mean, 1.0)), calls * (2 if real_imag else 1)


def score_mri_ssos(eps_fn, mask: torch.Tensor, y: torch.Tensor, betas, steps: int = 1000,
                   generator: torch.Generator | None = None, **options) -> tuple[torch.Tensor, int]:
    """Per-coil Score-MRI: coil k-space ``y`` [..., C, H, W] -> RSS image [..., H, W], ``(image, nfe)``.
    All coils run as one batch of single-coil problems A = M F (``eps_fn`` sees [B C, H, W]; so does a
    ``callback`` passed in ``options``)."""
    if not isinstance(y, torch.Tensor) or y.ndim < 3 or not y.is_complex():
        raise ValueError(f"y: expected complex coil k-space [..., C, H, W], got {getattr(y, 'shape', y)}")
    H, W = y.shape[-2:]
    m = check_mask(mask.to(y.device), (H, W)).bool()
    m = m.unsqueeze(-3) if m.ndim >= 3 else m  # leading (slice) dims of the mask skip the coil axis
    m = torch.broadcast_to(m, (*y.shape[:-2], m.shape[-2], W)).reshape(-1, m.shape[-2], W)
    op = SingleCoilMRI(m, (H, W))
    x, nfe = score_mri(eps_fn, op, y.reshape(-1, H, W), betas, steps, generator, **options)
    return rss(x.reshape(y.shape), dim=-3), nfe * y.shape[-3]


def score_mri_hybrid(eps_fn, mask: torch.Tensor, smaps: torch.Tensor, y: torch.Tensor, betas, steps: int = 500,
                     generator: torch.Generator | None = None, *, m_steps: int = 50, lam_start: float = 1.0,
                     lam_end: float = 0.2, **options) -> tuple[torch.Tensor, int]:
    """Hybrid Score-MRI (Chung & Ye, MedIA 2022; repo ``get_pc_fouriercs_RI_coil_SENSE``): coil
    k-space ``y`` [..., C, H, W] -> SENSE image S^H x [..., H, W] (complex), ``(image, nfe)``.

    Every coil is sampled as in `score_mri_ssos` (single-coil problems A_c = M F with per-coil hard
    data consistency, ``options`` as `score_mri`); after step i with i % ``m_steps`` == 0 (not the
    last), the coil images x take one SENSE Kaczmarz step with A = M F S (``smaps`` [..., C, H, W],
    unit norm over coils) and lambda linear from ``lam_start`` at i = 0 to ``lam_end`` at i = N::

        r = sqrt(abar) y - A (S^H x),     x_c <- x_c + lambda S_c A^H r

    (sqrt(abar) y: the data at the state's noise level, the VP analogue of the repo's y).  With
    S^H S = 1 the combined image takes exactly the Landweber step S^H x <- S^H x + lambda A^H r.
    Stated deviation: the repo adds A^H r (one image) to every coil image unweighted; weighting by
    S_c keeps the step inside the SENSE model.  The paper: N = 500, m = 50, lambda 1.0 -> 0.2.
    """
    if not isinstance(y, torch.Tensor) or y.ndim < 3 or not y.is_complex():
        raise ValueError(f"y: expected complex coil k-space [..., C, H, W], got {getattr(y, 'shape', y)}")
    if not isinstance(smaps, torch.Tensor) or not smaps.is_complex() or smaps.shape[-3:] != y.shape[-3:]:
        raise ValueError(f"smaps: expected complex maps [..., C, H, W] matching y {tuple(y.shape)}, got "
                         f"{getattr(smaps, 'dtype', type(smaps).__name__)} {tuple(getattr(smaps, 'shape', ()))}")
    if not isinstance(m_steps, int) or isinstance(m_steps, bool) or m_steps < 1:
        raise ValueError(f"m_steps: expected a positive int, got {m_steps!r}")
    if not (lam_start >= 0 and lam_end >= 0):
        raise ValueError(f"lam_start, lam_end: expected >= 0, got {lam_start}, {lam_end}")
    H, W = y.shape[-2:]
    m = check_mask(mask.to(y.device), (H, W)).bool()
    A = MultiCoilMRI(smaps, m)
    mc = m.unsqueeze(-3) if m.ndim >= 3 else m
    mc = torch.broadcast_to(mc, (*y.shape[:-2], mc.shape[-2], W)).reshape(-1, mc.shape[-2], W)
    op = SingleCoilMRI(mc, (H, W))
    n = int(steps)

    def sense_step(i: int, x: torch.Tensor, abar: float) -> torch.Tensor:
        if i % m_steps:
            return x
        lam = lam_start + (lam_end - lam_start) * i / n
        return sense_kaczmarz_step(x.reshape(y.shape), sqrt(abar) * y, A, lam).reshape(x.shape)

    x, nfe = score_mri(eps_fn, op, y.reshape(-1, H, W), betas, steps, generator, hook=sense_step, **options)
    return (smaps.conj() * x.reshape(y.shape)).sum(-3), nfe * y.shape[-3]


def sense_kaczmarz_step(x: torch.Tensor, y: torch.Tensor, operator, lam: float) -> torch.Tensor:
    """Coil images ``x`` [..., C, H, W] -> x + lam S A^H (y - A S^H x) for the SENSE ``operator``
    A = M F S (``medrecon.physics.mri.MultiCoilMRI``, maps ``operator.smaps``): the hybrid
    Score-MRI coupling step (`score_mri_hybrid`)."""
    smaps = operator.smaps
    r = y - operator.forward((smaps.conj() * x).sum(-3))
    return x + lam * smaps * operator.adjoint(r).unsqueeze(-3)
