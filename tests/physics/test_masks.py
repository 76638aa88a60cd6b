"""Tests for medrecon.physics.masks against sigpy's Poisson disc and the analytic inclusion law
of Gumbel-top-k sampling (identity with fastMRI's mask functions: test_fastmri_reference.py)."""
import math

import numpy as np
import pytest
import torch

from medrecon.physics.masks import KINDS, SampledMask, center_mask, make_mask, sample_mask


def test_only_last_two_dims_matter_and_broadcasts():
    a = make_mask("random", (24, 37), 4, 0.08, seed=3)
    b = make_mask("random", (2, 4, 24, 37), 4, 0.08, seed=3)
    assert torch.equal(a, b)
    kspace = torch.ones(4, 24, 37, dtype=torch.complex64)
    assert (kspace * make_mask("poisson", (24, 37), 3, 0.1, seed=0)).shape == kspace.shape
    assert (kspace * a).shape == kspace.shape


def test_seed_none_is_nondeterministic_but_valid():
    masks = [sample_mask("random", (8, 368), 4, 0.08) for _ in range(6)]
    for m in masks:
        assert m.num_low_frequencies == round(368 * 0.08)
        assert bool((m.mask | ~m.acs).all())
    assert any(not torch.equal(masks[0].mask, m.mask) for m in masks[1:])
    for kind in KINDS:
        m = sample_mask(kind, (32, 32), 4, 0.1)  # every kind accepts seed=None
        assert bool((m.mask | ~m.acs).all())


def test_poisson_bisection_ends_where_sigpys_loops():
    """sigpy.mri.poisson's slope bisection never ends once its midpoint rounds to an end of the bracket
    (seed 334, 32x32, 4x, calib 3x3): ours stops there with sigpy's error, and equals sigpy elsewhere."""
    import sigpy.mri

    from medrecon.physics.masks import _sigpy_poisson

    with pytest.raises(ValueError, match="kind='poisson': sigpy cannot reach acceleration=4"):
        sample_mask("poisson", (32, 32), 4, 0.1, seed=334)
    for seed in (0, 1, 7):
        ref = sigpy.mri.poisson((32, 32), 4, calib=(3, 3), dtype=np.float32, seed=seed)
        assert np.array_equal(_sigpy_poisson((32, 32), 4, (3, 3), seed), ref)


def test_global_rng_state_untouched():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    for kind in KINDS:
        sample_mask(kind, (32, 48), 4, 0.1, seed=5)
        sample_mask(kind, (32, 48), 4, 0.1)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert torch.equal(torch_state, torch.get_rng_state())


# ----------------------------------------------------------------------------- variable density

@pytest.mark.parametrize("kind", ["gaussian1d", "gaussian2d", "poisson"])
@pytest.mark.parametrize("shape,acceleration,center_fraction",
                         [((64, 64), 4, 0.08), ((48, 64), 6, 0.1), ((63, 57), 3, 0.12)])
def test_variable_density_properties(kind, shape, acceleration, center_fraction):
    H, W = shape
    m = sample_mask(kind, shape, acceleration, center_fraction, seed=11)
    assert isinstance(m, SampledMask) and m.mask.dtype == torch.bool
    assert m.mask.shape == ((1, W) if kind == "gaussian1d" else (H, W))
    # centre fully sampled, and it is exactly center_mask's block
    assert bool(m.mask[m.acs].all())
    if kind == "gaussian1d":
        assert m.acs_shape == (H, round(W * center_fraction))
        assert torch.equal(m.acs, center_mask(shape, center_fraction=center_fraction))
        assert int(m.mask.sum()) == round(W / acceleration)  # exact column count
    else:
        rows, cols = round(H * center_fraction), round(W * center_fraction)
        assert m.acs_shape == (rows, cols) and int(m.acs.sum()) == rows * cols
        assert torch.equal(m.acs, center_mask(shape, center_fraction=center_fraction, two_d=True))
        if kind == "gaussian2d":
            assert int(m.mask.sum()) == round(H * W / acceleration)
        else:  # sigpy hits accel within 0.1; adding the centre block can only lower it a bit
            assert abs(m.acceleration - acceleration) < 0.05 * acceleration
    # determinism with a seed; different seeds differ
    again = sample_mask(kind, shape, acceleration, center_fraction, seed=11)
    other = sample_mask(kind, shape, acceleration, center_fraction, seed=12)
    assert torch.equal(m.mask, again.mask)
    assert not torch.equal(m.mask, other.mask)


def test_poisson_is_sigpys_pattern():
    sigpy_mri = pytest.importorskip("sigpy.mri")
    for shape, acc, cf, seed in [((64, 64), 4, 0.125, 0), ((48, 80), 5, 0.125, 7)]:
        calib = (round(shape[0] * cf), round(shape[1] * cf))
        assert calib[0] % 2 == 0 and calib[1] % 2 == 0  # even block: same centering as ours
        ref = sigpy_mri.poisson(shape, acc, calib=calib, seed=seed, dtype=np.float32) > 0
        got = make_mask("poisson", shape, acc, cf, seed=seed)
        np.testing.assert_array_equal(got.numpy(), ref)
        assert abs(shape[0] * shape[1] / ref.sum() - acc) < 0.1  # sigpy's own guarantee


def test_gaussian1d_inclusion_law():
    """With one column left to draw, Gumbel-max picks column i with probability w_i / sum(w),
    w_i = exp(-k_i^2 / (2 sigma^2)), sigma = W * 15/128: compare frequencies over many seeds."""
    W, n_low, acceleration = 16, 2, 16 / 3  # round(W / acc) = 3 columns: 2 centre + 1 drawn
    cf = n_low / W
    k = np.arange(W) - W // 2
    w = np.exp(-k.astype(float) ** 2 / (2 * (W * 15 / 128) ** 2))
    center = center_mask((1, W), n_low)[0].numpy()
    w[center] = 0
    p = w / w.sum()
    n = 3000
    counts = np.zeros(W)
    for seed in range(n):
        m = make_mask("gaussian1d", (4, W), acceleration, cf, seed=seed)[0].numpy()
        assert m.sum() == 3 and m[center].all()
        counts += m & ~center
    # each count is Binomial(n, p_i): 5 standard deviations (plus 1 for p_i ~ 0) per column
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1)


# ----------------------------------------------------------------------------- center_mask

def test_center_mask_2d_block():
    block = center_mask((9, 10), (3, 4), two_d=True)
    assert block.shape == (9, 10) and int(block.sum()) == 12
    rows = block.any(1).nonzero().flatten().tolist()
    cols = block.any(0).nonzero().flatten().tolist()
    assert rows == [3, 4, 5] and cols == [3, 4, 5, 6]
    assert torch.equal(center_mask((9, 10), 4, two_d=True),
                       center_mask((9, 10), (4, 4), two_d=True))
    assert torch.equal(center_mask((20, 40), center_fraction=0.1, two_d=True),
                       center_mask((20, 40), (2, 4), two_d=True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one"),
    (dict(num_low_frequencies=3, center_fraction=0.1), "exactly one"),
    (dict(num_low_frequencies=11), "fit in shape"),
    (dict(num_low_frequencies=-1), "fit in shape"),
    (dict(num_low_frequencies=2.5), "num_low_frequencies"),
    (dict(center_fraction=1.5), "center_fraction"),
])
def test_center_mask_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        center_mask((8, 10), **kwargs)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,kwargs,match", [
    (("cartesian", (32, 32), 4, 0.08), {}, "kind must be one of random, equispaced"),
    (("random", (32, 32), 0.5, 0.08), {}, "acceleration must be"),
    (("random", (32, 32), math.nan, 0.08), {}, "acceleration must be"),
    (("random", (32, 32), "4", 0.08), {}, "acceleration must be"),
    (("random", (32, 32), 4, 0.0), {}, r"center_fraction must be a number in \(0, 1\)"),
    (("random", (32, 32), 4, 1.0), {}, "center_fraction"),
    (("random", (32, 32), 4, -0.1), {}, "center_fraction"),
    (("random", (32,), 4, 0.08), {}, "shape must be a sequence of at least 2"),
    (("random", 32, 4, 0.08), {}, "shape must be"),
    (("random", (0, 32), 4, 0.08), {}, "positive H and W"),
    (("random", (32, -4), 4, 0.08), {}, "positive H and W"),
    (("random", (32, 3), 4, 0.9), {}, "center_fraction"),
    (("equispaced", (32, 32), 2.5, 0.08), {}, "acceleration must be an integer"),
    (("magic", (32, 32), 2.5, 0.08), {}, "acceleration must be an integer"),
    (("magic_fraction", (32, 32), 4, 0.5), {}, "magic_fraction"),
    (("equispaced_fraction", (32, 32), 4, 0.3), {}, "equispaced_fraction"),
    (("gaussian1d", (32, 32), 8, 0.3), {}, "gaussian1d"),
    (("gaussian2d", (32, 32), 8, 0.5), {}, "gaussian2d"),
    (("poisson", (32, 32), 8, 0.5), {}, "poisson"),
    (("random", (32, 32), 4, 0.08), dict(offset=1), "offset applies only"),
    (("equispaced", (32, 32), 4, 0.08), dict(offset=-1), "offset must be"),
    (("random", (32, 32), 4, 0.08), dict(seed=-1), "seed must be"),
    (("random", (32, 32), 4, 0.08), dict(seed=2**32), "seed must be"),
    (("random", (32, 32), 4, 0.08), dict(seed=1.5), "seed must be"),
])
def test_bad_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_mask(*args, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_masks_plug_into_single_coil_operator(kind):
    """Every kind is a valid Cartesian mask for SingleCoilMRI: k-space off the mask is zero and
    on the mask equals the centered FFT (fastMRI convention)."""
    from medrecon.physics import SingleCoilMRI, fft2c

    H, W = 32, 48
    mask = make_mask(kind, (H, W), 4, 0.1, seed=0)
    x = torch.randn(2, H, W, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    y = SingleCoilMRI(mask, shape=(H, W)).forward(x)
    full = mask.expand(H, W)
    assert bool((y[..., ~full] == 0).all())
    torch.testing.assert_close(y[..., full], fft2c(x)[..., full], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape,acceleration", [((640, 368), 4), ((640, 320), 8), ((320, 320), 6)])
def test_poisson_real_sizes_match_sigpy(shape, acceleration):
    sigpy_mri = pytest.importorskip("sigpy.mri")
    cf = 0.05  # 32x18 / 32x16 / 16x16 calibration blocks: even, so centering agrees with sigpy
    calib = (round(shape[0] * cf), round(shape[1] * cf))
    ref = sigpy_mri.poisson(shape, acceleration, calib=calib, seed=3, dtype=np.float32) > 0
    got = sample_mask("poisson", shape, acceleration, cf, seed=3)
    np.testing.assert_array_equal(got.mask.numpy(), ref)
    assert abs(got.acceleration - acceleration) < 0.1
