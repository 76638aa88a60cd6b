"""Parker short-scan weights for fan-beam FBP (Parker, Med. Phys. 9(2), 1982, eq. 12).

A fan-beam scan over ``pi + 2 delta`` (``delta`` >= the half fan angle ``gamma_max``) measures
every line at least once; lines near the start and end are measured twice: the fan ray
``(beta, gamma)`` is the ray ``(beta + pi + 2 gamma, -gamma)`` (our geometry: fan ray ``g`` at view
``a`` is the parallel ray ``(a + g, R sin g)``, module `ct_geometry`).  Parker's weights, with
``beta`` the view angle measured from the first view,

    w = sin^2(pi/4 * beta / (delta - gamma))                     0 <= beta <= 2 delta - 2 gamma
    w = 1                                           2 delta - 2 gamma <= beta <= pi - 2 gamma
    w = sin^2(pi/4 * (pi + 2 delta - beta) / (delta + gamma))   pi - 2 gamma <= beta <= pi + 2 delta

sum to one over each redundant pair and are smooth, so ``2 * dbeta * sum_k w_k Q_k`` (the
weights applied to the projections *before* filtering) replaces the full-scan ``dbeta * sum``.
``delta`` is taken from the scan: ``delta = (scan range - pi) / 2`` (the generalised weights of
Wesarg et al., Med. Phys. 2002, for over-scans), which must be >= ``gamma_max``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["parker_weights", "short_scan_range"]


def short_scan_range(geometry) -> float:
    """The minimum scan range ``pi + 2 gamma_max`` (radians) of a fan-beam geometry."""
    return math.pi + 2.0 * float(geometry.gammas.abs().max())


def parker_weights(geometry) -> tuple[torch.Tensor, float]:
    """``(w [n_angles, n_detectors] float64, dbeta)`` for a fan-beam short scan.

    The view angles must increase monotonically (any start, unwrapped modulo 2 pi), be evenly
    spaced (no gap wider than 1.5 x the mean step) and span at least ``pi + 2 gamma_max``
    (first to last view) but less than ``2 pi``; otherwise a ``ValueError`` says what is missing.
    """
    from .ct_geometry import FanBeam

    if not isinstance(geometry, FanBeam):
        raise ValueError(f"Parker short-scan weights need a FanBeam geometry, got "
                         f"{type(geometry).__name__}")
    a = geometry.angles.to(torch.float64)
    k = a.numel()
    if k < 3:
        raise ValueError(f"a short scan needs at least 3 views, got {k}")
    beta = torch.remainder(a - a[0], 2 * math.pi)
    steps = torch.diff(beta)
    if bool((steps <= 0).any()):
        raise ValueError("short-scan angles must increase monotonically from the first view "
                         "(unwrapped modulo 2 pi); sort them or use a full scan")
    span = float(beta[-1])
    need = short_scan_range(geometry)
    dbeta = span / (k - 1)
    if span < need - 1e-9:
        raise ValueError(
            f"angles cover {math.degrees(span):.4g} deg (first to last view) but a fan-beam short "
            f"scan needs pi + 2 gamma_max = {math.degrees(need):.4g} deg (gamma_max = "
            f"{math.degrees((need - math.pi) / 2):.4g} deg); include both end points, e.g. "
            f"linspace(a0, a0 + pi + 2 gamma_max, K)")
    if span + dbeta >= 2 * math.pi - 1e-9:
        raise ValueError(f"angles cover {math.degrees(span + dbeta):.4g} deg, a full scan: use the "
                         "full-scan FBP (short_scan=False)")
    if float(steps.max()) > 1.5 * dbeta:
        raise ValueError(f"short-scan angles are not evenly spaced: largest step "
                         f"{math.degrees(float(steps.max())):.3g} deg, mean "
                         f"{math.degrees(dbeta):.3g} deg")
    delta = (span - math.pi) / 2
    g = geometry.gammas.to(torch.float64).view(1, -1)
    b = beta.view(-1, 1)
    rise = torch.sin(math.pi / 4 * b / (delta - g).clamp_min(1e-12)) ** 2
    fall = torch.sin(math.pi / 4 * (math.pi + 2 * delta - b) / (delta + g).clamp_min(1e-12)) ** 2
    # closed ramps, open plateau: the edge rays (|gamma| = delta) at the first / last view get 0
    w = torch.where(b <= 2 * delta - 2 * g, rise,
                    torch.where(b < math.pi - 2 * g, torch.ones_like(rise), fall))
    return w.clamp_(0.0, 1.0), dbeta
