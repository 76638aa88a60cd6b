"""One generic check over every linear operator (STYLE.md): adjointness, normal == A^H A,
linearity, dtype preservation — plus the MRI operators against a fastMRI-built reference."""
import pytest
import torch

from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI

fastmri = pytest.importorskip("fastmri")


def _c(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


def _mask(shape, seed, p=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) < p


# factory -> (operator, input shape, output shape)
def single_2d():
    return SingleCoilMRI(_mask((16, 12), 1)), (2, 16, 12), (2, 16, 12)


def single_column():
    return SingleCoilMRI(_mask((1, 12), 2), shape=(16, 12)), (16, 12), (16, 12)


def single_odd():
    return SingleCoilMRI(_mask((1, 9), 3), shape=(15, 9)), (15, 9), (15, 9)


def multi_column():
    return MultiCoilMRI(_c((4, 16, 12), 4), _mask((1, 12), 5)), (16, 12), (4, 16, 12)


def multi_2d():
    return MultiCoilMRI(_c((3, 10, 8), 6), _mask((10, 8), 7)), (10, 8), (3, 10, 8)


def multi_odd_2d():
    return MultiCoilMRI(_c((3, 9, 7), 8), _mask((9, 7), 9)), (9, 7), (3, 9, 7)


def multi_odd_column():
    return MultiCoilMRI(_c((3, 9, 7), 10), _mask((1, 7), 11)), (9, 7), (3, 9, 7)


def multi_batched_per_slice_masks():
    # two slices, each with its own column mask; image batch [2, H, W]
    return (MultiCoilMRI(_c((2, 5, 16, 12), 12), _mask((2, 1, 12), 13)), (2, 16, 12),
            (2, 5, 16, 12))


def multi_big_rows():
    # tall enough to take the blocked-rows path of the column-mask normal operator on CPU
    return MultiCoilMRI(_c((8, 160, 64), 14), _mask((1, 64), 15)), (160, 64), (8, 160, 64)


FACTORIES = [single_2d, single_column, single_odd, multi_column, multi_2d, multi_odd_2d,
             multi_odd_column, multi_batched_per_slice_masks, multi_big_rows]


def _dot(a, b):
    return torch.vdot(a.flatten().to(torch.complex128), b.flatten().to(torch.complex128))


@pytest.mark.parametrize("factory", FACTORIES)
def test_adjoint_dot_product(factory):
    A, ishape, oshape = factory()
    x, y = _c(ishape, 20), _c(oshape, 21)
    lhs, rhs = _dot(A.forward(x), y), _dot(x, A.adjoint(y))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs) + 1e-6


@pytest.mark.parametrize("factory", FACTORIES)
def test_normal_is_adjoint_of_forward(factory):
    A, ishape, _ = factory()
    x = _c(ishape, 22)
    torch.testing.assert_close(A.normal(x), A.adjoint(A.forward(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", FACTORIES)
def test_linearity_and_dtype(factory):
    A, ishape, oshape = factory()
    x1, x2 = _c(ishape, 23), _c(ishape, 24)
    a, b = 0.7 - 0.2j, -1.3 + 0.5j
    torch.testing.assert_close(A.forward(a * x1 + b * x2), a * A.forward(x1) + b * A.forward(x2),
                               rtol=1e-5, atol=1e-5)
    y = A.forward(x1)
    assert y.dtype == torch.complex64 and tuple(y.shape) == oshape
    assert A.adjoint(y).dtype == torch.complex64 and tuple(A.adjoint(y).shape) == ishape
    # inputs are never modified in place
    x_copy = x1.clone()
    A.normal(x1)
    A.adjoint(y)
    assert torch.equal(x1, x_copy)


def _fastmri_sense(smaps, mask, x):
    s = torch.view_as_real(smaps)
    xr = torch.view_as_real(x).unsqueeze(-4)
    k = fastmri.fft2c(fastmri.complex_mul(s, xr)) * mask.unsqueeze(-3).unsqueeze(-1).float()
    return torch.view_as_complex(k.contiguous())


def _fastmri_sense_adj(smaps, mask, y):
    s = torch.view_as_real(smaps)
    yr = torch.view_as_real(y * mask.unsqueeze(-3))
    img = fastmri.complex_mul(fastmri.complex_conj(s), fastmri.ifft2c(yr)).sum(-4)
    return torch.view_as_complex(img.contiguous())


@pytest.mark.parametrize("shape", [(4, 16, 12), (3, 9, 7), (2, 4, 8, 6)])
@pytest.mark.parametrize("column", [True, False])
def test_multicoil_matches_fastmri_reference(shape, column):
    smaps = _c(shape, 30)
    H, W = shape[-2:]
    mask = _mask((1, W) if column else (H, W), 31)
    x = _c(shape[:-3] + (H, W), 32)
    y = _c(shape, 33)
    A = MultiCoilMRI(smaps, mask)
    torch.testing.assert_close(A.forward(x), _fastmri_sense(smaps, mask, x), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(A.adjoint(y), _fastmri_sense_adj(smaps, mask, y), rtol=1e-5,
                               atol=1e-5)


def test_singlecoil_matches_fastmri_and_projects():
    mask = _mask((1, 10), 40)
    A = SingleCoilMRI(mask, shape=(8, 10))
    x = _c((8, 10), 41)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x)).contiguous()) * mask
    torch.testing.assert_close(A.forward(x), ref)
    y = A.forward(_c((8, 10), 42))
    p = A.project(x, y)
    torch.testing.assert_close(A.forward(p), y, rtol=1e-5, atol=1e-5)  # data kept exactly
    torch.testing.assert_close(A.project(p, y), p, rtol=1e-5, atol=1e-5)  # idempotent


def test_gradient_is_normal_minus_adjoint():
    A, ishape, oshape = multi_column()
    x, y = _c(ishape, 50), _c(oshape, 51)
    torch.testing.assert_close(A.gradient(x, y), A.adjoint(A.forward(x) - y), rtol=1e-5,
                               atol=1e-5)


def test_bad_inputs_are_named():
    smaps = _c((4, 16, 12), 60)
    with pytest.raises(ValueError, match="smaps must be a complex"):
        MultiCoilMRI(smaps.real, torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(1, 10\)"):
        MultiCoilMRI(smaps, torch.ones(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., 1, W\]"):
        MultiCoilMRI(smaps, torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        MultiCoilMRI(smaps, torch.full((1, 12), 0.5))
    bad = smaps.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        MultiCoilMRI(bad, torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="leading dims"):
        MultiCoilMRI(_c((3, 4, 16, 12), 61), torch.ones(2, 1, 12, dtype=torch.bool))
    A = MultiCoilMRI(smaps, torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"y must have shape \[\.\.\., 4, 16, 12\]"):
        A.adjoint(_c((3, 16, 12), 62))
    with pytest.raises(ValueError, match=r"x must have shape"):
        A.forward(_c((16, 10), 63))
    with pytest.raises(ValueError, match="shape=\\(H, W\\) is required"):
        SingleCoilMRI(torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must be a complex"):
        A.normal(torch.randn(16, 12))
    with pytest.raises(ValueError, match="y must be a complex"):
        SingleCoilMRI(torch.ones(1, 12, dtype=torch.bool), shape=(16, 12)).adjoint(
            torch.randn(16, 12))
