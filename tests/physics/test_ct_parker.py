"""Parker short-scan fan-beam FBP (issue 6): matches the full scan; unweighted does not."""
import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

import medrecon.physics.ct_parker as ct_parker
from medrecon.physics.ct import FanBeam, ParallelBeam, fbp, parker_weights, short_scan_range

N = 48


def _phantom():
    return torch.tensor(resize(shepp_logan_phantom(), (N, N), anti_aliasing=True), dtype=torch.float64)


def _geo(angles, detector):
    return FanBeam(N, angles, 2.0 * N, 1.0 * N, 72, 1.5, detector)


def _short_angles(detector, start=0.3, extra=1):
    full = _geo(torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1], detector)
    need = short_scan_range(full)
    k = int(math.ceil(need / math.radians(1.0))) + extra
    return torch.linspace(0, need, k, dtype=torch.float64) + start


@pytest.mark.parametrize("detector", ["equiangular", "flat"])
def test_short_scan_matches_full_scan_and_unweighted_does_not(detector, monkeypatch):
    img = _phantom()
    full = _geo(torch.linspace(0, 2 * math.pi, 361, dtype=torch.float64)[:-1], detector)
    short = _geo(_short_angles(detector), detector)
    ref = fbp(full.forward(img), full)
    rec = fbp(short.forward(img), short, short_scan=True)
    m = ref != 0
    err = float((rec[m] - ref[m]).norm() / ref[m].norm())
    assert err < 0.02, err
    assert torch.isfinite(rec).all()
    # the same short scan without Parker weights (all ones), even after the best scalar gain
    w, dbeta = parker_weights(short)
    monkeypatch.setattr(ct_parker, "parker_weights", lambda g: (torch.ones_like(w), dbeta))
    unw = fbp(short.forward(img), short, short_scan=True)
    c = float((unw[m] * ref[m]).sum() / (unw[m] ** 2).sum())
    err_unw = float((c * unw[m] - ref[m]).norm() / ref[m].norm())
    assert err_unw > 10 * err, (err, err_unw)


def test_weights_are_parker_and_pairs_sum_to_one():
    # conjugate ray of (beta, gamma) is (beta + pi + 2 gamma, -gamma): choose the detector so
    # that 2 gamma is a multiple of the view step, then every pair lies on the grid
    n_det, sdd = 41, 3.0 * N
    dg = math.radians(0.5)  # fan-angle step; view step = 2 dg
    geo0 = FanBeam(N, torch.zeros(3, dtype=torch.float64), 2.0 * N, 1.0 * N, n_det, dg * sdd)
    gmax = float(geo0.gammas.abs().max())
    k = int(round((math.pi + 2 * gmax) / (2 * dg))) + 1
    angles = torch.arange(k, dtype=torch.float64) * 2 * dg
    geo = FanBeam(N, angles, 2.0 * N, 1.0 * N, n_det, dg * sdd)
    w, dbeta = parker_weights(geo)
    assert dbeta == pytest.approx(2 * dg)
    c = n_det // 2
    pairs = 0
    for j in range(1, n_det - 1):  # the two edge rays (|gamma| = delta) are a measure-zero set
        shift = (j - c)  # 2 gamma / view step
        for i in range(k):
            i2 = i + (k - 1) - (geo.n_angles - 1) + int(round(math.pi / (2 * dg))) + shift
            if 0 <= i2 < k:
                assert float(w[i, j] + w[i2, 2 * c - j]) == pytest.approx(1.0, abs=1e-9)
                pairs += 1
    assert pairs > 0
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    assert float(w[0].max()) < 0.05 and float(w[-1].max()) < 0.05  # smooth start and end


def test_short_scan_errors():
    img = _phantom()
    ang = _short_angles("equiangular", extra=1)
    with pytest.raises(ValueError, match="pi \\+ 2 gamma_max"):
        g = _geo(ang[:-10], "equiangular")
        fbp(g.forward(img), g, short_scan=True)
    with pytest.raises(ValueError, match="short_scan=True"):  # full-scan FBP on a short scan
        g = _geo(ang, "equiangular")
        fbp(g.forward(img), g)
    with pytest.raises(ValueError, match="monotonically"):
        g = _geo(ang.flip(0)[torch.randperm(len(ang), generator=torch.Generator().manual_seed(0))],
                 "equiangular")
        fbp(g.forward(img), g, short_scan=True)
    with pytest.raises(ValueError, match="full scan"):
        g = _geo(torch.linspace(0, 2 * math.pi, 181, dtype=torch.float64)[:-1], "equiangular")
        fbp(g.forward(img), g, short_scan=True)
    with pytest.raises(ValueError, match="fan-beam"):
        p = ParallelBeam(N, torch.linspace(0, math.pi, 60, dtype=torch.float64)[:-1])
        fbp(p.forward(img), p, short_scan=True)
    with pytest.raises(ValueError, match="evenly"):
        a = torch.cat((ang[:50], ang[60:]))
        g = _geo(a, "equiangular")
        fbp(g.forward(img), g, short_scan=True)
