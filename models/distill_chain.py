"""Chain distillation with the data step: a K-step DDNM chain of the student, data projection
between its steps, matched end to end to the teacher's N-step DDNM reconstruction of the same
measurement from the same starting noise.

This is knowledge distillation of a whole sampler (Luhman & Luhman 2021, arXiv:2101.02388, Eq. 11:
the student maps the teacher's starting noise to the teacher's output), applied to the posterior
sampler instead of the unconditional one.  Reference code: tcl9876/Denoising_Student (commit 07f4ad7)
``create_dataset.py`` L20-102 (the teacher's (x_T, output) pairs made once, in shards, as our bank)
and ``training.py`` L39-58 (``make_training_objects``: Eq. 11, L2 loss between student(x_T) and the
teacher's output).  Departures: the student is not one network call but the K-step DDNM chain with
the data projection between its calls (gradient through all K), each pair carries its measurement,
and the student starts from the teacher's weights (the repo's one-step model also does).  Why not progressive distillation alone
(`medrecon.models.distill`, Salimans & Ho 2022): it distils the *deterministic* DDIM map, and
DDNM's accuracy at fastMRI size comes from its stochastic update (eta 0.85) with a data projection
at every step.  Measured on the validation slice (simulator seed 1500, 16 coils, 320x320, 8x
equispaced, centre 0.04, brain128-vp): DDNM-50 31.32 dB at eta 0.85 but 28.81 at eta 0, so even a
perfect progressive student of the deterministic chain stays 2.5 dB below the stochastic DDNM-50
(docs/distill.md).  Here the teacher's target already holds the stochastic, data-projected chain.

Problem per item (``chain_problem``): a training window x [H, W] (complex), a fastMRI column mask
(``kind`` and acceleration drawn per item, the acceleration's fastMRI centre fraction, random
offset), y = M F x; y and x divided by max |F^H y| (the zero-filled maximum, as the methods'
``normalize=True``); x_T ~ CN(0, I).  Teacher: ``medrecon.posterior.ddnm.ddnm`` with the single-coil
projection (k-space replacement), ``teacher_steps`` steps, ``eta``, no gradient -> target.  Student:
the same function at ``steps`` steps from the same x_T (its own noise draws), gradient through its
K network calls.  Loss: mean |x_student - target|^2 over pixels (real and imaginary parts).  The
code path is the samplers' own (``ddnm`` -> ``ddim_dc``), so what is trained is what runs.

The student keeps the teacher's network and eps parametrisation; its checkpoint records, in
``extra.distilled``, the grid (``medrecon.posterior.ddim_dc.grid(K, T)``) that
`medrecon.methods.distilled.check_distilled` enforces, plus ``data_step``, ``eta``, the teacher's
steps and the held-out record (``heldout``: MSE against the teacher and PSNR against the truth of
held-out windows, before and after).

Strips (``rows=R``, ``chain_problem``): the problems are R-row strips of whole fastMRI-size images,
so that the student sees inference's aliasing geometry and pixel scale at a fraction of the cost.
Coils (``coils=C``): multi-coil SENSE problems y = M F S x with simulated sensitivities; the data step
is then DDNM's CG projection (``cg_iters`` 10), as in ``medrecon recon`` on multi-coil data.  Single-coil
problems are a different posterior: on the same held-out strips the teacher's DDNM-50 is at 25.1 dB
single-coil and 32.5 dB with 16 coils (docs/distill.md).  Noise (``snr=s``): the simulator's
complex Gaussian k-space noise at SNR s in every problem, so that teacher and student reconstruct
the noisy measurements ``medrecon recon`` gets; ``cg_iters`` sets the student chain's CG count (the
teacher keeps DDNM's 10), so that it is trained with the data step it runs with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medrecon.physics.masks import KINDS_1D, sample_mask
from medrecon.datasets.simulate_mri import coil_maps
from medrecon.physics.fft import fft2c
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI
from medrecon.posterior.ddnm import ddnm
from medrecon.solvers.base import noise_like

__all__ = ["CENTER_FRACTIONS", "COLUMN_KINDS", "ChainProblem", "chain_problem", "teacher_targets", "student_chain", "chain_loss",
           "blend_target", "psnr_db", "heldout"]

CENTER_FRACTIONS = {4: 0.08, 8: 0.04}  # fastMRI's pairs (knee 4x/0.08, 8x/0.04)
COLUMN_KINDS = KINDS_1D  # the column masks (fastMRI's kinds and gaussian1d)


@dataclass
class ChainProblem:
    """A batch of problems: scaled truth x, measurement y, column masks, start noise x_T, and, for
    multi-coil problems, the coil sensitivities (single-coil when ``smaps`` is None)."""
    x: torch.Tensor      # [B, H, W] complex, divided by the zero-filled maximum
    y: torch.Tensor      # [B, H, W] k-space ([B, C, H, W] with coils; zeros off the mask)
    mask: torch.Tensor   # [B, 1, W] bool
    x_T: torch.Tensor    # [B, H, W] complex start noise
    smaps: torch.Tensor | None = None  # [B, C, H, W] complex, sum_c |S_c|^2 = 1

    def operator(self):
        if self.smaps is not None:
            return MultiCoilMRI(self.smaps, self.mask)
        return SingleCoilMRI(self.mask, tuple(self.x.shape[-2:]))

    def index(self, idx) -> "ChainProblem":
        return ChainProblem(self.x[idx], self.y[idx], self.mask[idx], self.x_T[idx],
                            None if self.smaps is None else self.smaps[idx])

    @staticmethod
    def cat(parts: list["ChainProblem"]) -> "ChainProblem":
        coils = {p.smaps is None for p in parts}
        if len(coils) > 1:
            raise ValueError("ChainProblem.cat: expected all single-coil or all multi-coil problems")
        keys = ("x", "y", "mask", "x_T") + (() if parts[0].smaps is None else ("smaps",))
        return ChainProblem(*(torch.cat([getattr(p, k) for p in parts]) for k in keys))


def chain_problem(x: torch.Tensor, g: torch.Generator, kinds=("equispaced_fraction", "random"),
                  accelerations=(4, 8), rows: int = 0, coils: int = 0, snr: float = 0.0) -> ChainProblem:
    """The problems of clean windows ``x`` [B, H, W] (module docstring); all draws from ``g``.

    ``rows=R``: ``x`` holds whole images (the encoded field of view [2 s, s]) and each problem is a
    strip of R rows of one of them, at a random offset within the object's readout extent (the
    central half of H, +- 32 rows, as the multi-scale windows).  A column mask's projection
    F^H M F = I_H (x) F_W^H M_W F_W acts on each row alone, so the strip's problem is the whole
    image's problem restricted to those rows: its aliasing is the whole image's (copies W/R apart)
    and its scale is the whole image's zero-filled maximum (as ``normalize=True`` at inference),
    at R/H of the cost.

    ``coils=C``: multi-coil SENSE problems, y = M F S x, with C simulated sensitivities per item (the
    simulator's ring of loops, `medrecon.datasets.simulate_mri.coil_maps`, random ring, scaled to the
    object: the central half of the rows when ``rows``), and the scale max |A^H y| of SENSE
    (``normalize=True``).  S is diagonal in the image, so the strip argument holds with the maps'
    rows: a strip is the whole image's SENSE problem on those rows.

    ``snr=s`` (> 0): measurement noise as the simulator's (`medrecon.datasets.simulate_mri`): circular
    complex Gaussian of std sigma = sqrt(mean |x|^2 / C) / s per k-space sample and coil (C = 1
    single-coil), mean over the whole item, drawn after the noise-free problem's draws (so the same
    generator gives the same problem plus noise).  It is drawn as white image-domain noise w per coil,
    y = M F (S x + w): F is orthonormal, so M F w is the simulator's masked k-space noise, and a strip
    (rows of S x + w) is still the whole image's noisy problem on those rows.  The scale is max |A^H y|
    of the noisy whole image, as ``normalize=True`` sees it."""
    if not x.is_complex() or x.ndim != 3:
        raise ValueError(f"x: expected complex windows [B, H, W], got {tuple(x.shape)} {x.dtype}")
    bad = [a for a in accelerations if a not in CENTER_FRACTIONS] + [k for k in kinds if k not in COLUMN_KINDS]
    if bad or not accelerations or not kinds:
        raise ValueError(f"accelerations, kinds: expected some of {sorted(CENTER_FRACTIONS)} and of {COLUMN_KINDS}, "
                         f"got {list(accelerations)}, {list(kinds)}")
    B, H, W = x.shape
    if coils < 0:
        raise ValueError(f"coils: expected 0 (single-coil) or the number of coils, got {coils}")
    if not snr >= 0:
        raise ValueError(f"snr: expected 0 (noise-free) or the simulator's SNR > 0, got {snr}")
    if rows and not 0 < rows <= H:
        raise ValueError(f"rows: expected 0 (the whole window) or 1 <= rows <= {H} (the images' height), got {rows}")
    masks, offsets, maps = [], [], []
    for _ in range(B):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
        acc = accelerations[int(torch.randint(len(accelerations), (1,), generator=g))]
        seed = int(torch.randint(2 ** 31, (1,), generator=g))
        masks.append(sample_mask(kind, (H, W), acc, CENTER_FRACTIONS[acc], seed).mask)
        if rows:
            lo, hi = (min(max(v, 0), H - rows) for v in (H // 4 - 32, H - H // 4 + 32 - rows))
            offsets.append(lo + int(torch.randint(max(hi - lo, 0) + 1, (1,), generator=g)))
        if coils:
            rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=g)))
            maps.append(torch.from_numpy(coil_maps(coils, (H, W), (H // 2, W) if rows else (H, W), rng)))
    mask = torch.stack(masks).to(x.device)                                   # [B, 1, W]
    smaps = torch.stack(maps).to(x.device) if coils else None                # [B, C, H, W]
    A = MultiCoilMRI(smaps, mask) if coils else SingleCoilMRI(mask, (H, W))
    strip = (lambda v, dim: torch.stack([vi.narrow(dim, o, rows) for vi, o in zip(v, offsets)])) if rows else None
    x_T = noise_like(x if not rows else strip(x, 0), g)
    w = None
    if snr:
        sigma = (x.abs().square().flatten(1).mean(1) / max(coils, 1)).sqrt() / snr
        w = noise_like(x, g, (B, coils, H, W) if coils else (B, H, W)) * sigma.view(-1, *[1] * (3 if coils else 2))
    y = _measure(A, x, w, mask)
    scale = A.adjoint(y).abs().flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    if rows:
        x = strip(x, 0)
        if coils:
            smaps = strip(smaps, 1)
        w = None if w is None else strip(w, w.ndim - 3)
        A = MultiCoilMRI(smaps, mask) if coils else SingleCoilMRI(mask, (rows, W))
        y = _measure(A, x, w, mask)
    scale_y = scale[:, None] if coils else scale
    return ChainProblem(x / scale, y / scale_y, mask, x_T, smaps)


def _measure(A, x: torch.Tensor, w: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """y = A x, plus M F w for image-domain noise w ([B, C, H, W] multi-coil, [B, H, W] single-coil)."""
    y = A.forward(x)
    if w is None:
        return y
    m = mask[:, None] if w.ndim == 4 else mask
    return y + fft2c(w) * m


def _run(eps_fn, p: ChainProblem, betas, steps: int, eta: float, g: torch.Generator, cg_iters: int = 10) -> torch.Tensor:
    x, _ = ddnm(eps_fn, p.operator(), p.y, betas, steps, g, eta=eta, x_T=p.x_T, cg_iters=cg_iters)
    return x


@torch.no_grad()
def teacher_targets(eps_fn, p: ChainProblem, betas, steps: int, eta: float, g: torch.Generator) -> torch.Tensor:
    """The teacher's ``steps``-step DDNM reconstructions of ``p`` (no gradient)."""
    return _run(eps_fn, p, betas, steps, eta, g)


def student_chain(eps_fn, p: ChainProblem, betas, steps: int, eta: float, g: torch.Generator,
                  cg_iters: int = 10) -> torch.Tensor:
    """The student's ``steps``-step DDNM reconstructions of ``p`` (gradient through eps_fn); ``cg_iters``:
    its data step's CG count on multi-coil problems (the teacher keeps DDNM's 10)."""
    return _run(eps_fn, p, betas, steps, eta, g, cg_iters)


def chain_loss(eps_fn, p: ChainProblem, target: torch.Tensor, betas, steps: int, eta: float,
               g: torch.Generator, cg_iters: int = 10) -> torch.Tensor:
    """mean |student chain - target|^2 (real and imaginary parts)."""
    d = student_chain(eps_fn, p, betas, steps, eta, g, cg_iters) - target
    return torch.view_as_real(d).square().mean()


def blend_target(teacher: torch.Tensor, truth: torch.Tensor, truth_weight: float) -> torch.Tensor:
    """(1 - w) teacher + w truth: the minimiser of (1 - w)|s - teacher|^2 + w|s - truth|^2, which equals
    |s - blend|^2 + w (1 - w)|teacher - truth|^2 (a constant), so training on the blend is training on the
    weighted sum.  w = 0 is distillation; w > 0 anchors the student to the truth, a supervised term the
    reference (Luhman & Luhman, Eq. 11) does not have (departure, measured in docs/distill.md)."""
    if truth_weight == 0:
        return teacher
    return torch.lerp(teacher, truth.to(teacher.dtype), float(truth_weight))


def psnr_db(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-item PSNR of magnitudes, peak = max |ref| (the metrics' convention)."""
    a, b = x.abs().flatten(1), ref.abs().flatten(1)
    mse = (a - b).square().mean(1).clamp(min=1e-20)
    return 10 * torch.log10(b.amax(1).square() / mse)


@torch.no_grad()
def heldout(eps_fn, p: ChainProblem, target: torch.Tensor, betas, steps: int, eta: float, seed: int,
            cg_iters: int = 10) -> dict:
    """Held-out record: the student chain's MSE against the teacher's targets, and the mean PSNR
    (dB) against the truth of the student and of the teacher (fixed noise: ``seed``)."""
    g = torch.Generator(device=p.x.device).manual_seed(int(seed))
    out = student_chain(eps_fn, p, betas, steps, eta, g, cg_iters)
    mse = float(torch.view_as_real(out - target).square().mean())
    psnr = psnr_db(out, p.x)
    return {"heldout_mse": mse, "heldout_psnr": float(psnr.mean()),
            "teacher_psnr": float(psnr_db(target, p.x).mean()),
            "heldout_psnr_min": float(psnr.min())}
