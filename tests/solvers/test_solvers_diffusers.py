"""Each solver equals the diffusers scheduler loop of the same name (default config, no clipping)."""
import diffusers
import pytest
import torch

from medrecon.models.schedules import make_betas
from medrecon.sample import SOLVERS, sample

BETAS = make_betas("linear", 1000)
W = torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) / 8


def eps_fn(x, t):
    """A fixed nonlinear eps-model that depends on t (so wrong timesteps are caught)."""
    return torch.tanh(x.reshape(x.shape[0], -1) @ W).reshape(x.shape) * (1 + float(t) / 1000)


def x_T():
    return torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))


def diffusers_loop(cls, n, generator=None, **config):
    s = cls(num_train_timesteps=1000, trained_betas=BETAS.float().numpy(), **config)
    s.set_timesteps(n)
    x = x_T()
    if cls in (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler):
        # diffusers scales by init_noise_sigma = sigma_max; the VP state needs sqrt(sigma_max^2 + 1)
        x = x * (float(s.sigmas.max()) ** 2 + 1) ** 0.5
    seen = []
    for t in s.timesteps:
        seen.append(float(t))
        kw = {"generator": generator} if generator is not None else {}
        x = s.step(eps_fn(s.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x, seen


CASES = [
    ("ddim", diffusers.DDIMScheduler, {"clip_sample": False}, {}),
    ("dpm-solver++", diffusers.DPMSolverMultistepScheduler, {}, {}),
    ("dpm-solver++", diffusers.DPMSolverMultistepScheduler, {"solver_order": 3}, {"order": 3}),
    ("pndm", diffusers.PNDMScheduler, {}, {}),
    ("pndm", diffusers.PNDMScheduler, {"skip_prk_steps": True}, {"skip_prk_steps": True}),
    ("unipc", diffusers.UniPCMultistepScheduler, {}, {}),
    ("unipc", diffusers.UniPCMultistepScheduler, {"solver_order": 3}, {"order": 3}),
    ("euler", diffusers.EulerDiscreteScheduler, {}, {}),
    ("heun", diffusers.HeunDiscreteScheduler, {}, {}),
]


@pytest.mark.parametrize("name,cls,config,opts", CASES, ids=lambda v: str(v)[:24])
@pytest.mark.parametrize("n", [4, 10, 17])
def test_matches_diffusers(name, cls, config, opts, n):
    ref, ref_ts = diffusers_loop(cls, n, **config)
    seen = []

    def spy(x, t):
        seen.append(float(t))
        return eps_fn(x, t)

    out = sample(spy, x_T(), name, n, BETAS, **opts)
    assert seen == ref_ts  # same model calls, same timesteps, same order
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


@pytest.mark.parametrize("name,cls,config,opts", [
    ("ddpm", diffusers.DDPMScheduler, {"clip_sample": False}, {}),
])
@pytest.mark.parametrize("n", [5, 12])
def test_stochastic_matches_with_same_noise(name, cls, config, opts, n):
    ref, _ = diffusers_loop(cls, n, generator=torch.Generator().manual_seed(7), **config)
    out = sample(eps_fn, x_T(), name, n, BETAS, generator=torch.Generator().manual_seed(7), **opts)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_with_same_noise(eta):
    s = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=BETAS.float().numpy(), clip_sample=False)
    s.set_timesteps(8)
    x, g = x_T(), torch.Generator().manual_seed(3)
    for t in s.timesteps:
        x = s.step(eps_fn(x, t), t, x, eta=eta, generator=g).prev_sample
    out = sample(eps_fn, x_T(), "ddim", 8, BETAS, eta=eta, generator=torch.Generator().manual_seed(3))
    assert ((out - x).norm() / x.norm()).item() < 1e-4


@pytest.mark.parametrize("n", [5, 12])
def test_unipc_bh1_matches_diffusers_before_its_final_step(n):
    """diffusers' bh1 with final sigma 0 computes B(h) = -inf times 0 on its last step and returns NaN;
    medrecon takes the limit (x0).  Every earlier state must agree."""
    s = diffusers.UniPCMultistepScheduler(trained_betas=BETAS.float().numpy(), solver_type="bh1")
    s.set_timesteps(n)
    x, ref = x_T(), []
    for t in s.timesteps:
        x = s.step(eps_fn(x, t), t, x).prev_sample
        ref.append(x)
    ours = []
    out = sample(eps_fn, x_T(), "unipc", n, BETAS, variant="bh1", callback=lambda d: ours.append(d["x"]))
    for a, b in zip(ours[:-1], ref[:-1]):
        assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert bool(torch.isfinite(out).all())


def test_complex_input_equals_real_and_imag_parts():
    """eps linear in x => the solver on complex x equals solving real and imaginary parts separately."""
    A = torch.randn(64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) / 16

    def lin(x, t):
        f = x.reshape(x.shape[0], -1)
        return (f @ A.to(f.dtype)).reshape(x.shape) * (1 + float(t) / 1000)

    xr = x_T().double()
    xi = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name in ("ddim", "pndm", "dpm-solver++", "unipc", "heun"):
        out = sample(lin, torch.complex(xr, xi), name, 6, BETAS)
        assert out.dtype == torch.complex128
        torch.testing.assert_close(out.real, sample(lin, xr, name, 6, BETAS))
        torch.testing.assert_close(out.imag, sample(lin, xi, name, 6, BETAS))


def test_bad_arguments():
    with pytest.raises(ValueError, match="solver.*ddim"):
        sample(eps_fn, x_T(), "nope", 5, BETAS)
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            sample(eps_fn, x_T(), "ddim", bad, BETAS)
    with pytest.raises(ValueError, match="betas"):
        sample(eps_fn, x_T(), "ddim", 5, None)
    assert set(SOLVERS) >= {"ddim", "ddpm", "dpm-solver++", "euler", "heun"}
