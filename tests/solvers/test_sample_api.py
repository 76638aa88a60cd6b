"""The public ``medrecon.sample.sample`` contract: hooks, callbacks, randomness, devices/dtypes."""
import pytest
import torch

from medrecon.models.schedules import make_betas
from medrecon.sample import SOLVERS, sample, timesteps_for
from tests.solvers.helpers import random_unet_model

BETAS = make_betas("linear", 1000)


def eps_fn(x, t):
    return 0.5 * x * (1 + float(t) / 1000)


def x_T(dtype=torch.complex64):
    return torch.randn(2, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("solver", ["ddim", "ddpm", "pndm", "dpm-solver++", "unipc", "euler", "heun"])
def test_callback_and_identity_dc(solver):
    seen, dc_calls = [], []

    def dc(x0, t):
        dc_calls.append(float(t))
        return x0

    g = torch.Generator().manual_seed(1)
    out = sample(eps_fn, x_T(), solver, 6, BETAS, dc=dc, generator=g, callback=lambda d: seen.append(d["i"]))
    ref = sample(eps_fn, x_T(), solver, 6, BETAS, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # identity hook = no hook
    assert seen == list(range(len(seen))) and len(seen) >= 6  # one per step (PNDM: one per model call)
    assert len(dc_calls) >= 6
    assert out.dtype == torch.complex64 and out.shape == (2, 8, 8)


def test_dc_hook_is_applied():
    """A hook that zeroes x0 makes DDIM's final state zero (its last step returns x0)."""
    out = sample(eps_fn, x_T(), "ddim", 5, BETAS, dc=lambda x0, t: torch.zeros_like(x0))
    assert out.abs().max().item() == 0.0


def test_randomness_only_through_generator():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample(eps_fn, x_T(), "ddpm", 5, BETAS, generator=torch.Generator().manual_seed(9))
    assert torch.equal(state, torch.get_rng_state())
    b = sample(eps_fn, x_T(), "ddpm", 5, BETAS, generator=torch.Generator().manual_seed(9))
    c = sample(eps_fn, x_T(), "ddpm", 5, BETAS, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_timestep_tables_are_diffusers_defaults():
    assert timesteps_for("ddim", 10, 1000).tolist() == list(range(900, -1, -100))
    assert timesteps_for("dpm-solver++", 4, 1000).tolist() == [999, 749, 500, 250]
    assert timesteps_for("euler", 3, 1000).tolist() == [999.0, 499.5, 0.0]


def test_eps_fn_shape_checked():
    with pytest.raises(ValueError, match="eps_fn"):
        sample(lambda x, t: x[..., :4], x_T(), "ddim", 3, BETAS)


def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError) as e:
        sample(eps_fn, x_T(), "plms2", 3, BETAS)
    for name in SOLVERS:
        assert name in str(e.value)


def test_unknown_solver_option_lists_valid_ones():
    from medrecon.sample import solver_options

    with pytest.raises(ValueError, match=r"ddim.*\['order'\].*eta"):
        sample(eps_fn, x_T(), "ddim", 3, BETAS, order=3)
    with pytest.raises(ValueError, match="variant"):
        sample(eps_fn, x_T(), "unipc", 3, BETAS, varient="bh1")
    assert set(solver_options("dpm-solver++")) == {"order", "lower_order_final"}
    assert solver_options("euler") == ()


def test_steps_beyond_training_horizon_and_nfe_below_one():
    for bad in (0, -3, 1001):
        with pytest.raises(ValueError, match=r"steps.*\[1, 1000\]"):
            sample(eps_fn, x_T(), "dpm-solver++", bad, BETAS)


def test_model_queried_beyond_its_training_horizon():
    """Sampling a 100-step model with 1000-step betas: the wrapper names the horizon."""
    model = random_unet_model(100)
    x = torch.randn(1, 8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="training horizon.*99"):
        sample(model.eps_fn, x, "ddim", 5, BETAS)
