"""MRI operators (physics/mri.py): hard data consistency and bad input.  Adjointness, normal,
gradient, linearity and dtype over every MRI operator: test_operator_properties.py; agreement
with a fastMRI-built SENSE reference: test_fastmri_reference.py."""
import pytest
import torch

from medrecon.physics.mri import MultiCoilMRI, SingleCoilMRI


def _c(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


def _mask(shape, seed, p=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) < p


def test_singlecoil_project_keeps_data_and_is_idempotent():
    mask = _mask((1, 10), 40)
    A = SingleCoilMRI(mask, shape=(8, 10))
    x = _c((8, 10), 41)
    y = A.forward(_c((8, 10), 42))
    p = A.project(x, y)
    torch.testing.assert_close(A.forward(p), y, rtol=1e-5, atol=1e-5)  # data kept exactly
    torch.testing.assert_close(A.project(p, y), p, rtol=1e-5, atol=1e-5)  # idempotent


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
