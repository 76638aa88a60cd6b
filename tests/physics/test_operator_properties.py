"""One generic check over every linear operator in `medrecon.physics` (STYLE.md): the adjoint
dot-product test, ``normal == A^H A`` (Hermitian, positive semi-definite), ``gradient ==
A^H (A x - y)``, linearity, dtype/shape preservation and inputs left untouched -- in single
(float32/complex64) and double (float64/complex128) precision, on CUDA too when present.

Operators: single-coil and multi-coil SENSE MRI (even and odd sizes, column and 2-D masks,
per-slice masks, the blocked-rows path), SPIRiT ``G`` and its residual ``G - I`` (whose normal
is `SpiritOperator.normal`), CT parallel and fan beam (equi-angular and flat detectors, chunked
and uncached grids).  Reference-library comparisons live in test_fastmri_reference.py and the
per-operator modules.

Tolerances, relative to ``|<A x, y>|`` for the dot product and to ``||A^H A x||`` for the normal
operator: 1e-5 and 2e-6 in single precision, 1e-12 and 1e-13 in double.  Measured worst cases
(CPU, torch 2.x): dot product 8.9e-7 (single, fan beam) and 7.4e-15 (double, blocked-rows
SENSE); normal 1.3e-7 and 2.9e-16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from medrecon.physics.ct import FanBeam, ParallelBeam
from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI
from medrecon.physics.spirit import SpiritOperator

PRECISIONS = {"single": (torch.float32, torch.complex64),
              "double": (torch.float64, torch.complex128)}
DOT_TOL = {"single": 1e-5, "double": 1e-12}
NORMAL_TOL = {"single": 2e-6, "double": 1e-13}


def dot(a: torch.Tensor, b: torch.Tensor) -> complex:
    """``<a, b> = sum(conj(a) b)`` accumulated in double precision (real or complex inputs)."""
    a, b = a.detach().cpu().flatten(), b.detach().cpu().flatten()
    dt = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    return complex(torch.vdot(a.to(dt), b.to(dt)))


def norm(a: torch.Tensor) -> float:
    return float(a.detach().cpu().to(torch.complex128 if a.is_complex() else torch.float64).norm())


@dataclass
class Case:
    """A linear map ``forward: [*ishape] -> [*oshape]`` with its ``adjoint`` (and ``normal`` /
    ``gradient`` where the operator has them), and the dtype its inputs take."""
    forward: Callable
    adjoint: Callable
    ishape: tuple
    oshape: tuple
    dtype: torch.dtype
    device: torch.device
    normal: Callable | None = None
    gradient: Callable | None = None

    def rand(self, shape, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, dtype=self.dtype, generator=g).to(self.device)

    def x(self, seed):
        return self.rand(self.ishape, seed)

    def y(self, seed):
        return self.rand(self.oshape, seed)


def _c(shape, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g).to(device)


def _mask(shape, seed, device, p=0.4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(device)


def _op_case(op, ishape, oshape, dtype, device):
    return Case(op.forward, op.adjoint, ishape, oshape, dtype, device, op.normal,
                getattr(op, "gradient", None))


# ------------------------------------------------------------------------------------------- MRI
def _single(mask_shape, shape, ishape, seed):
    def make(real, cplx, device):
        A = SingleCoilMRI(_mask(mask_shape, seed, device), shape=shape)
        return _op_case(A, ishape, ishape, cplx, device)
    return make


def _multi(smaps_shape, mask_shape, ishape, seed):
    def make(real, cplx, device):
        A = MultiCoilMRI(_c(smaps_shape, seed, cplx, device), _mask(mask_shape, seed + 1, device))
        return _op_case(A, ishape, smaps_shape, cplx, device)
    return make


MRI = {
    "single-2d": _single((16, 12), None, (2, 16, 12), 1),
    "single-column": _single((1, 12), (16, 12), (16, 12), 2),
    "single-odd-column": _single((1, 9), (15, 9), (15, 9), 3),
    "single-odd-2d": _single((15, 9), None, (15, 9), 16),
    "multi-column": _multi((4, 16, 12), (1, 12), (16, 12), 4),
    "multi-2d": _multi((3, 10, 8), (10, 8), (10, 8), 6),
    "multi-odd-2d": _multi((3, 9, 7), (9, 7), (9, 7), 8),
    "multi-odd-column": _multi((3, 9, 7), (1, 7), (9, 7), 10),
    # two slices, each with its own column mask; image batch [2, H, W]
    "multi-per-slice-masks": _multi((2, 5, 16, 12), (2, 1, 12), (2, 16, 12), 12),
    # tall enough to take the blocked-rows path of the column-mask normal operator on CPU
    "multi-blocked-rows": _multi((8, 160, 64), (1, 64), (160, 64), 14),
}


# ---------------------------------------------------------------------------------------- SPIRiT
def _spirit(C, H, W, kw, seed, residual):
    """``G`` (forward/adjoint) or ``G - I`` (residual/residual_adjoint, normal) on [2, C, H, W]."""
    def make(real, cplx, device):
        op = SpiritOperator(_c((C, C, kw, kw), seed, cplx, device), (H, W))
        shape = (2, C, H, W)
        if residual:
            return Case(op.residual, op.residual_adjoint, shape, shape, cplx, device, op.normal)
        return Case(op.forward, op.adjoint, shape, shape, cplx, device)
    return make


SPIRIT = {
    "spirit-G": _spirit(4, 16, 10, 5, 7, residual=False),
    "spirit-residual": _spirit(4, 16, 10, 5, 7, residual=True),
    "spirit-G-odd": _spirit(3, 15, 9, 3, 17, residual=False),
    "spirit-residual-odd": _spirit(3, 15, 9, 3, 17, residual=True),
}


# -------------------------------------------------------------------------------------------- CT
THETA = np.deg2rad(np.linspace(0.0, 180.0, 60, endpoint=False))
FULL = np.linspace(0.0, 2 * math.pi, 180, endpoint=False)


def _ct(build):
    def make(real, cplx, device):
        A = build()
        return _op_case(A, (2, *A.image_shape), (2, *A.sinogram_shape), real, device)
    return make


CT = {
    "ct-parallel": _ct(lambda: ParallelBeam(32, THETA)),
    "ct-parallel-odd-square": _ct(lambda: ParallelBeam(33, THETA[::2], 50, 0.8, 1.1,
                                                       circle=False)),
    "ct-parallel-chunked-nocache": _ct(lambda: ParallelBeam(32, THETA, chunk_samples=5000,
                                                            cache_mb=0)),
    "ct-fan-equiangular": _ct(lambda: FanBeam(32, FULL, 100.0, 60.0, 100, 1.6, "equiangular")),
    "ct-fan-flat": _ct(lambda: FanBeam(32, FULL, 100.0, 60.0, 100, 1.6, "flat")),
    "ct-fan-flat-chunked": _ct(lambda: FanBeam(31, FULL[::3], 80.0, 40.0, 45, 1.3, "flat", 0.9,
                                               chunk_samples=4000, cache_mb=0)),
}

OPERATORS = {**MRI, **SPIRIT, **CT}
WITH_NORMAL = [k for k in OPERATORS if k not in ("spirit-G", "spirit-G-odd")]
WITH_GRADIENT = [k for k in OPERATORS if k.startswith(("multi", "ct"))]


def make(name, precision, device="cpu"):
    real, cplx = PRECISIONS[precision]
    return OPERATORS[name](real, cplx, torch.device(device))


# ------------------------------------------------------------------------------------ the checks
def check_adjoint(A: Case, tol: float) -> None:
    x, y = A.x(20), A.y(21)
    ax, aty = A.forward(x), A.adjoint(y)
    lhs, rhs = dot(ax, y), dot(x, aty)
    assert abs(lhs - rhs) <= tol * abs(lhs), (lhs, rhs)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint_dot_product(name, precision):
    check_adjoint(make(name, precision), DOT_TOL[precision])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", WITH_NORMAL)
def test_normal_is_adjoint_of_forward(name, precision):
    A = make(name, precision)
    x = A.x(22)
    ref = A.adjoint(A.forward(x))
    got = A.normal(x)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert norm(got - ref) <= NORMAL_TOL[precision] * norm(ref)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", WITH_NORMAL)
def test_normal_is_hermitian_positive_semidefinite(name, precision):
    A = make(name, precision)
    x, y = A.x(23), A.x(24)
    nx, ny = A.normal(x), A.normal(y)
    tol = DOT_TOL[precision]
    assert abs(dot(nx, y) - dot(x, ny)) <= tol * abs(dot(nx, y))
    xnx = dot(x, nx)  # = ||A x||^2: real and >= 0
    ax2 = norm(A.forward(x)) ** 2
    assert abs(xnx.imag) <= tol * ax2 and xnx.real > 0
    assert abs(xnx.real - ax2) <= tol * ax2


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", WITH_GRADIENT)
def test_gradient_is_normal_minus_adjoint(name, precision):
    A = make(name, precision)
    x, y = A.x(50), A.y(51)
    ref = A.adjoint(A.forward(x) - y)
    assert norm(A.gradient(x, y) - ref) <= NORMAL_TOL[precision] * norm(ref)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", OPERATORS)
def test_linearity_dtype_and_inputs_untouched(name, precision):
    A = make(name, precision)
    x1, x2 = A.x(25), A.x(26)
    a, b = (0.7 - 0.2j, -1.3 + 0.5j) if A.dtype.is_complex else (0.7, -1.3)
    lhs, rhs = A.forward(a * x1 + b * x2), a * A.forward(x1) + b * A.forward(x2)
    assert norm(lhs - rhs) <= DOT_TOL[precision] * norm(rhs)
    y = A.forward(x1)
    assert y.dtype == A.dtype and tuple(y.shape) == A.oshape
    aty = A.adjoint(y)
    assert aty.dtype == A.dtype and tuple(aty.shape) == A.ishape
    # inputs are never modified in place
    x_copy, y_copy = x1.clone(), y.clone()
    A.forward(x1)
    A.adjoint(y)
    if A.normal is not None:
        assert A.normal(x1).dtype == A.dtype
    assert torch.equal(x1, x_copy) and torch.equal(y, y_copy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", OPERATORS)
def test_cuda_adjoint_and_agrees_with_cpu(name, precision):
    A, B = make(name, precision, "cuda"), make(name, precision)
    check_adjoint(A, DOT_TOL[precision])
    x = A.x(27)
    ax = A.forward(x)
    assert ax.device == x.device
    ref = B.forward(x.cpu())
    assert norm(ax.cpu() - ref) <= 1e-4 * norm(ref)
    if A.normal is not None:
        nx, ref = A.normal(x), B.normal(x.cpu())
        assert nx.device == x.device
        assert norm(nx.cpu() - ref) <= 1e-4 * norm(ref)
