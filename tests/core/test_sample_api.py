"""The public ``medrecon.sample.sample`` contract: hooks, callbacks, randomness, devices/dtypes."""
import pytest
import torch

from medrecon.models.schedules import make_betas
from medrecon.sample import SOLVERS, sample, timesteps_for

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


def test_bench_solvers_rows_and_table(capsys):
    from medrecon.bench_solvers import main, run
    rows = run(solvers=("ddim", "heun", "pndm"), nfes=(5, 20), size=8, batch=1)
    by = {(r.solver, r.steps): r for r in rows}
    assert by[("ddim", 20)].rel_err < by[("ddim", 5)].rel_err  # more calls, closer to the exact endpoint
    assert by[("heun", 10)].nfe == 19  # 2N - 1 model calls
    assert [r for r in rows if r.solver == "pndm"] and all(r.nfe <= 20 for r in rows)
    assert main(["--solvers", "unipc", "--nfe", "5", "--size", "8", "--batch", "1"]) == 0
    assert "unipc" in capsys.readouterr().out
    with pytest.raises(ValueError, match="solvers"):
        run(solvers=("rk4",))
