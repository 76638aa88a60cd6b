"""SPIRiT-Diffusion (Cui, Cao et al., IEEE TMI 2024; repo zhyjSIAT/SPIRiT-Diffusion, ``sde_lib.py::SpiritSDE``
reverse ``discretize`` and ``sampling.py::get_pc_sampler`` / ``LangevinCorrector``; ../shared/METHODS.md
"SPIRiT-Diffusion").

Per-coil images x ``[..., C, H, W]`` (the network sees the coils as a batch), VE schedule
sigma(t) = sigma_min (sigma_max / sigma_min)^t (0.01, 348: the repo's ``configs/SPIRiT``), forward
perturbation x_t = x + sigma P z with P = S S^H, training loss || sigma S^H s + S^H z ||^2.
With the calibrated SPIRiT kernel G (``medrecon.physics.spirit.SpiritOperator``: G as a per-pixel
coil-mixing matrix in the image domain) and Psi = (G - I)^H (G - I) (``SpiritOperator.normal``,
the gradient of 1/2 ||(G - I) x||^2; the repo's ``utils.Psi`` = F^-1 (I - G - G^H + G^H G) F):

- start: x_T = sigma_max P z, the forward process's own noise (the repo's ``prior_sampling``,
  ``sampling.py:421``, draws sigma_max z in full coil space; see the drift's dt below);
- Langevin corrector (``langevin``, alpha = 1 for the VE schedule; ``sampling.py:267-285``):
  x <- x + e (s - g_c) + sqrt(2 e) P z, e = 2 (snr ||z|| / ||s||)^2 (the repo: unprojected z);
- reverse-diffusion predictor (``reverse_diffusion``, the repo's SPIRiT default; ``sde_lib.py:419-462``):
  x <- x - dt (eta/2) Psi x + G_i^2 P^2 (s - g_p) + G_i P z,  G_i^2 = sigma_i^2 - sigma_{i-1}^2 on the
  repo's discrete sigmas exp(linspace(log sigma_min, log sigma_max, N)) (sigma_{-1} = 0), time grid
  linspace(1, eps = 1e-5, N), dt = 1/N; the score is queried at the continuous sigma(t_i) (``get_score_fn``).
  Without the score and data terms, this is gradient descent on the SPIRiT inconsistency: the
  drift -(eta/2) Psi x (`spirit_drift`) vanishes on SPIRiT-consistent coil images (G x = x).
  The dt is a stated departure: the repo's ``discretize`` applies f = (eta/2) Psi x once per step
  (``sde_lib.py:436, 459``), while its own reverse SDE (``sde()``, ``sde_lib.py:378, 410, 415``) and the
  generic ``SDE.discretize`` (``sde_lib.py:71``) multiply the drift by dt = 1/N.  Without dt the drift's
  total pull grows with N (N eta/2 Psi): with a kernel 10% too weak it drives the unmeasured
  k-space to zero at N = 1000 (``tests/posterior/test_sde_sense_exact.py``); on the bench's 8x mask
  (N = 1000) it cost 6.9 dB (23.4 against 30.3 dB without the drift, issue 14).  The repo's strong
  per-step drift is also what removes its full-coil-space start and corrector noise, which the score
  (trained on noise sigma P z) cannot see; with dt that noise would stay, so all noise here is P z.
- output: x_mean of the last step, combined by S^H (``combine="sense"``; ``"rss"`` the repo's
  ``estimate_csm="sos"`` path; ``"coils"`` returns the coil images).

``in_range=True`` (default): after every data step the state is projected, x <- S S^H x, so that
every iterate stays in range(S), where the score is defined (the training loss
|| sigma S^H s + S^H z ||^2 identifies only S^H s; a lifted image prior, `coil_score_from_image_prior`,
acts only there).  With hard DC, per-coil replacement followed by P is rho <- rho + A^H (y - A rho) on
rho = S^H x (A = M F S): a unit Landweber step on the SENSE data, as the repo's data gradient, which
it P-projects (``VU_condition``, ``sde_lib.py:438-448``), never leaves range(S).  Without it
(``in_range=False``, the repo's unprojected state) the per-coil replacement puts back components
outside range(S) at every step that nothing removes: in the repo only its per-step (no dt) drift
does, which pulls towards the SPIRiT null space.  Measured: analytic test (exact coil score, N = 100)
relative error 4.05 without against 0.003 with; validation slice (simulator seed 1500, 8x
equispaced, brain128-vp lifted, N = 100) 16.02 dB before (no projection, no dt) -> 19.16 dB.

``dc_cg=k`` (> 0; the ``spirit-diffusion`` method's default is 10): the hard data step is the projection onto
the data-consistent set inside range(S), rho <- rho + A^+ (y - A rho) by k CG steps (`medrecon.posterior.common.prox`,
as DDNM's A^+), instead of the unit Landweber step.  A stated departure from the repo: its per-coil replacement is
the projection in full coil space, which the range(S) projection above turns into one Landweber step; at 50 steps
those leave the data far from consistent (A^H A has eigenvalues near 0 at 8x).  Measured on a validation
slice (simulator seed 1500, slice 0, 16 coils, 320x320, 8x equispaced_fraction cf 0.04, brain128-vp,
``--steps 50``): 21.44 dB (dc_cg=0), 18.47 (the repo's ``dc="gradient"``), 31.72 (dc_cg=10); CG-SENSE 21.36,
L1-wavelet 23.75 (``medrecon recon VOL --slices 0 --mask equispaced_fraction --acceleration 8
--center-fraction 0.04 --steps 50 -o dc_cg=K``; docs/bench_recon.md).

Data consistency on the acquired k-space of every coil (``dc``):

- ``"hard"`` (default): after every corrector and predictor update the measured k-space samples of
  each coil are replaced by y (``SingleCoilMRI.project`` on the coil stack, as the VE reference code of
  Score-MRI does) and the returned x_mean is projected too, so the output reproduces y exactly
  (then P, the Landweber step above).  The rescaled gradients below vanish
  on a projected state and are not used.
- ``"gradient"``: the repo's soft data consistency: g = F^-1 M (M F x - y) per coil, rescaled per
  slice to ``mse`` ||s|| / ||g|| (predictor; 0.2) and ``corrector_mse`` ||s|| / ||g|| (corrector; 0.2).

Parameters the paper asks to tune first: ``eta`` (0.45), then ``snr`` (0.7), ``mse``.

Deviations from the repo, stated: norms for the step size and the gradient rescaling are per slice
over all coils (the repo: per-coil norms averaged over its coil batch, and the whole batch), noise
is circular complex CN(0, I) on complex images (the repo: N(0, 1) per real/imag channel), G is the
circular k-space convolution (the repo pads with zeros at the k-space edge), P^2 is applied as
written (= P for normalised maps), a zero score or gradient gives no move instead of NaN.

``score_fn(x, sigma)``: the score of the per-coil prior at noise level ``sigma`` (a 0-d tensor on x's
device) for coil images ``x [..., C, H, W]`` (a per-coil network: reshape the coils into the batch).
NFE counts network evaluations per image: steps * (n_corrector + 1) * ``nfe_per_score``, which is C
for a per-coil network (the default, as ``score_mri_ssos``) and 1 for a prior on coil-combined images
lifted to coil space by `coil_score_from_image_prior`.
"""
from __future__ import annotations

import math

import torch

from medrecon.physics.coils import rss
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI, check_mask
from medrecon.physics.spirit import SpiritOperator

from .common import COILS, DC_MODES, check_finite, check_generator, check_steps, langevin, noise_like, prox, soft_dc

__all__ = ["spirit_diffusion", "spirit_drift", "coil_projector", "coil_score_from_image_prior", "ve_score_from_vp"]

_MAX_STEPS = 100_000
COMBINE = ("sense", "rss", "coils")


def coil_projector(smaps: torch.Tensor):
    """P v = S (S^H v): coil images onto the range of the sensitivities (a projector for S^H S = 1)."""
    sc = smaps.conj()

    def P(v: torch.Tensor) -> torch.Tensor:
        return smaps * (sc * v).sum(-3, keepdim=True)
    return P


def coil_score_from_image_prior(score_fn, smaps: torch.Tensor):
    """Coil-space score ``s(x) = S s_rho(S^H x, sigma)`` from the score ``score_fn(rho, sigma)`` of a
    prior on coil-combined images rho [..., H, W] (normalised maps, S^H S = 1 on their support).

    Exact for the forward perturbation of SPIRiT-Diffusion, x_t = S rho + sigma P z with P = S S^H:
    then S^H x_t = rho + sigma S^H z with S^H z ~ CN(0, 1) per pixel, so the VE marginal of rho gives
    the coil-space score in the range of S; the paper's loss || sigma S^H s + S^H z ||^2 identifies
    nothing else (the orthogonal part is dropped by the P-projected predictor and the S^H combination).
    One network call per slice instead of one per coil."""
    sc = smaps.conj()

    def coil_score(x: torch.Tensor, sigma) -> torch.Tensor:
        return smaps * score_fn((sc * x).sum(-3), sigma).unsqueeze(-3)
    return coil_score


def ve_score_from_vp(eps_fn, schedule):
    """``score_fn(rho, sigma)`` at VE noise level sigma from a VP noise predictor ``eps_fn(x, t)`` on the
    discrete ``schedule`` (`medrecon.models.schedules.VPSchedule`), as k-diffusion's
    ``DiscreteEpsDDPMDenoiser``: rho + sigma z = x_t / sqrt(abar) with sigma^2 = (1 - abar) / abar, so

        score(rho, sigma) = -eps(rho / sqrt(1 + sigma^2), t(sigma)) / sigma,

    with t(sigma) interpolated in log sigma on sigma's device (`VPSchedule.sigma_to_t`; no host sync)."""
    def score_fn(rho: torch.Tensor, sigma) -> torch.Tensor:
        sig = torch.as_tensor(sigma, device=rho.device)
        t = schedule.sigma_to_t(sig).to(torch.float32)
        s = sig.to(rho.real.dtype)
        with torch.no_grad():
            return -eps_fn(rho / torch.sqrt(1 + s * s), t) / s
    return score_fn


def spirit_drift(x: torch.Tensor, spirit: SpiritOperator, eta: float = 0.45) -> torch.Tensor:
    """The SPIRiT part of the reverse step, -(eta/2) Psi x = -(eta/2) (G - I)^H (G - I) x: zero on
    SPIRiT-consistent coil images ``x [..., C, H, W]``."""
    return -0.5 * eta * spirit.normal(x)


def _check_inputs(y, mask, spirit, smaps, steps, generator):
    if not isinstance(y, torch.Tensor) or not y.is_complex() or y.ndim < 3:
        raise ValueError(f"y: expected complex coil k-space [..., C, H, W], got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    check_finite(y, "y")
    C, H, W = y.shape[-3:]
    if not isinstance(smaps, torch.Tensor) or not smaps.is_complex() or smaps.ndim < 3 \
            or tuple(smaps.shape[-3:]) != (C, H, W):
        raise ValueError(f"smaps: expected complex coil sensitivities [..., {C}, {H}, {W}] matching y, got "
                         f"{getattr(smaps, 'dtype', type(smaps).__name__)} {tuple(getattr(smaps, 'shape', ()))}")
    check_finite(smaps, "smaps")
    if isinstance(spirit, torch.Tensor):
        spirit = SpiritOperator(spirit.to(device=y.device, dtype=y.dtype), (H, W))
    if not isinstance(spirit, SpiritOperator):
        raise ValueError(f"spirit: expected a SpiritOperator or a kernel [..., C, C, k, k] from spirit_calibrate, "
                         f"got {type(spirit).__name__}")
    if spirit.ncoils != C or spirit.shape != (H, W):
        raise ValueError(f"spirit: operator for {spirit.ncoils} coils of size {spirit.shape}, but y has {C} coils "
                         f"of size {(H, W)}")
    check_steps(steps, _MAX_STEPS)
    check_generator(generator, y)
    m = check_mask(mask.to(y.device) if isinstance(mask, torch.Tensor) else mask, (H, W))
    m = m.unsqueeze(-3) if m.ndim >= 3 else m  # leading (slice) dims of the mask skip the coil axis
    return spirit, SingleCoilMRI(m, (H, W))


def spirit_diffusion(score_fn, mask: torch.Tensor, y: torch.Tensor, spirit, smaps: torch.Tensor,
                     steps: int = 1000, generator: torch.Generator | None = None, *,
                     sigma_min: float = 0.01, sigma_max: float = 348.0, eta: float = 0.45, snr: float = 0.7,
                     mse: float = 0.2, corrector_mse: float = 0.2, n_corrector: int = 1, dc: str = "hard",
                     eps: float = 1e-5, combine: str = "sense", nfe_per_score: int | None = None,
                     in_range: bool = True, dc_cg: int = 0, x_T: torch.Tensor | None = None,
                     callback=None) -> tuple[torch.Tensor, int]:
    """SPIRiT-Diffusion sample(s) from coil k-space ``y [..., C, H, W]`` (zeros off ``mask``, a
    Cartesian mask ``[..., 1, W]`` or ``[..., H, W]``): ``(image, nfe)`` (module docstring).
    ``spirit``: a ``SpiritOperator`` or a kernel from ``spirit_calibrate`` (SPIRiT-Diffusion calibrates
    with ``lam = LAM_SPIRIT_DIFFUSION``); ``smaps [..., C, H, W]`` the (normalised) sensitivities.
    ``callback(i, x)``: called with the coil-image state after every corrector and predictor update of
    step ``i`` (data step and range projection included) and with the returned coil images (i = steps)."""
    spirit, op = _check_inputs(y, mask, spirit, smaps, steps, generator)
    if dc not in DC_MODES:
        raise ValueError(f"dc: expected one of {DC_MODES}, got {dc!r}")
    if combine not in COMBINE:
        raise ValueError(f"combine: expected one of {COMBINE}, got {combine!r}")
    if not isinstance(dc_cg, int) or isinstance(dc_cg, bool) or dc_cg < 0:
        raise ValueError(f"dc_cg: expected an int >= 0 (0: per-coil replacement), got {dc_cg!r}")
    if min(eta, snr, mse, corrector_mse, n_corrector) < 0:
        raise ValueError(f"eta, snr, mse, corrector_mse, n_corrector: expected >= 0, got {eta}, {snr}, {mse}, "
                         f"{corrector_mse}, {n_corrector}")
    if not 0 < sigma_min < sigma_max or not 0 < eps < 1:
        raise ValueError(f"sigma_min, sigma_max, eps: expected 0 < sigma_min < sigma_max and 0 < eps < 1, got "
                         f"{sigma_min}, {sigma_max}, {eps}")
    smaps = smaps.to(device=y.device, dtype=y.dtype)
    P = coil_projector(smaps)
    aty = op.adjoint(y)
    hard = dc == "hard"

    n = int(steps)
    ts = torch.linspace(1.0, eps, n, dtype=torch.float64)
    sig_cont = (sigma_min * (sigma_max / sigma_min) ** ts).to(device=y.device, dtype=y.real.dtype)
    disc = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n, dtype=torch.float64))
    idx = (ts * (n - 1)).long()  # the repo's timestep = (t (N - 1)).long()
    prev = torch.where(idx > 0, disc[(idx - 1).clamp_min(0)], torch.zeros_like(disc[idx]))
    g2 = (disc[idx] ** 2 - prev ** 2).tolist()
    dt = 1.0 / n  # the SDE's time step (the repo's sde(): drift * dt; module docstring)

    sense = MultiCoilMRI(smaps, mask.to(y.device)) if dc_cg else None

    def data_step(v: torch.Tensor, i: int, notify: bool = True) -> torch.Tensor:
        if hard and in_range and dc_cg:  # rho <- rho + A^+ (y - A rho) by dc_cg CG steps, in range(S)
            v = smaps * prox(sense, y, (smaps.conj() * v).sum(-3), 0.0, dc_cg).unsqueeze(-3)
        else:
            v = op.project(v, y) if hard else v
            v = P(v) if in_range else v  # with hard DC: rho <- rho + A^H (y - A rho), a unit Landweber step
        if callback is not None and notify:
            callback(i, v)
        return v

    x = sigma_max * P(noise_like(y, generator)) if x_T is None else x_T.to(device=y.device, dtype=y.dtype)
    x = data_step(x, -1)
    x_mean = x
    for i in range(n):
        for _ in range(n_corrector):
            s = score_fn(x, sig_cont[i])
            z = noise_like(y, generator)
            x = data_step(langevin(x, s, z, snr, dims=COILS, grad=None if hard else op.normal(x) - aty,
                                   weight=corrector_mse, project=P), i)
        s = score_fn(x, sig_cont[i])
        cond = soft_dc(s, None if hard else op.normal(x) - aty, mse, COILS)
        x_mean = x + dt * spirit_drift(x, spirit, eta) + g2[i] * P(P(cond))
        x = data_step(x_mean + math.sqrt(g2[i]) * P(noise_like(y, generator)), i)
    out = data_step(x_mean, n, notify=False)
    if callback is not None:
        callback(n, out)
    nfe = n * (n_corrector + 1) * (y.shape[-3] if nfe_per_score is None else int(nfe_per_score))
    if combine == "coils":
        return out, nfe
    if combine == "rss":
        return rss(out, dim=-3), nfe
    return (smaps.conj() * out).sum(-3), nfe
