"""Conjugate gradient (`medrecon.linalg.cg`) against dense solves."""
import numpy as np
import torch

from medrecon.linalg import cg
from medrecon.physics import SingleCoilMRI, make_mask


def _hpd(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.complex128, generator=g)
    return a.mH @ a + n * torch.eye(n, dtype=torch.complex128)


def test_batched_complex_solve_matches_numpy():
    mats = torch.stack([_hpd(12, s) for s in range(3)])  # [3, 12, 12]
    rhs = torch.randn(3, 12, dtype=torch.complex128, generator=torch.Generator().manual_seed(9))
    x = cg(lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1), rhs, max_iter=60, tol=1e-12, ndim=1)
    ref = np.stack([np.linalg.lstsq(m, b, rcond=None)[0] for m, b in zip(mats.numpy(),
                                                                        rhs.numpy())])
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_converged_semidefinite_system_stays_finite_with_tol_zero():
    """A^H A of a Cartesian mask is a projection: CG is exact after one step, then idles."""
    mask = make_mask("random", (8, 8), 2, 0.25, seed=0)
    A = SingleCoilMRI(mask, shape=(8, 8))
    for dtype in (torch.complex64, torch.complex128):
        x = torch.randn(4, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
        rhs = A.normal(x)
        sol = cg(A.normal, rhs, max_iter=30, tol=0.0)
        assert torch.isfinite(sol).all()
        rel = (A.normal(sol) - rhs).abs().max() / rhs.abs().max()
        assert rel < 100 * torch.finfo(dtype).eps
