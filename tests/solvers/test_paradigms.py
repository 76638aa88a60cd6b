"""ParaDiGMS (``solver="paradigms"``): on the analytic Gaussian prior the Picard sweeps reach the
sequential DDIM / DDPM result (and the DDIM-with-DC reference update of DDNM / DDS) to 1e-4 with a
small tolerance, in fewer sequential sweeps than steps; the window call of the network adapter equals
per-state calls; bad options are clear errors."""
import pytest
import torch

import medrecon
from medrecon.models import make_betas
from medrecon.physics.mri import SingleCoilMRI
from medrecon.posterior import ddnm, dds
from medrecon.sample import sample, timesteps_for

from .helpers import random_unet_model

BETAS = make_betas("linear", 1000)
ACP = torch.cumprod(1 - BETAS.double(), 0)
PRIOR = medrecon.GaussianPrior((16, 16))
EPS = PRIOR.eps_fn(BETAS)
STEPS = 20


def _x_T(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t0 = int(timesteps_for("ddim", STEPS, 1000)[0])
    return PRIOR.noisy(PRIOR.sample(batch, generator=g), float(ACP[t0]), generator=g)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _run(solver, seed=3, **kw):
    return sample(EPS, _x_T(), solver, STEPS, BETAS, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("base, kw", [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {})])
def test_converges_to_the_sequential_sampler(base, kw):
    ref = _run(base, **kw)
    stats = {}
    out = _run("paradigms", base=base, window=6, tol=1e-6, stats=stats, **kw)
    assert _rel(out, ref) < 1e-4
    assert stats["steps"] == STEPS and stats["window"] == 6
    assert stats["depth"] < STEPS <= stats["evaluations"] <= 6 * stats["depth"]


def test_tolerance_trades_accuracy_for_depth_and_window_one_is_sequential():
    ref = _run("ddim")
    loose, tight, one = {}, {}, {}
    err_loose = _rel(_run("paradigms", window=STEPS, tol=0.1, stats=loose), ref)
    assert _rel(_run("paradigms", window=STEPS, tol=1e-6, stats=tight), ref) < 1e-4 < err_loose < 0.05
    assert loose["depth"] < tight["depth"] < STEPS
    assert _rel(_run("paradigms", window=1, stats=one), ref) < 1e-6
    assert one == {"depth": STEPS, "evaluations": STEPS, "steps": STEPS, "window": 1}


def test_max_iters_one_accepts_every_state_after_one_sweep():
    stats = {}
    _run("paradigms", window=5, tol=0.0, max_iters=1, stats=stats)
    assert stats["depth"] == STEPS // 5 and stats["evaluations"] == STEPS


def test_generic_dc_hook_and_callback():
    mask = torch.zeros(16, 16)
    mask[:, ::3] = 1
    op = SingleCoilMRI(mask)
    y = op.forward(PRIOR.sample(2, generator=torch.Generator().manual_seed(5)))

    def dc(x0, t):
        return op.project(x0, y)
    ref = _run("ddim", dc=dc)
    seen = []
    out = _run("paradigms", dc=dc, window=4, tol=1e-6, callback=lambda d: seen.append((d["i"], d["depth"])))
    assert _rel(out, ref) < 1e-4
    assert [i for i, _ in seen] == list(range(STEPS))  # each step reported once, in order
    assert [d for _, d in seen] == sorted(d for _, d in seen) and seen[-1][1] < STEPS


@pytest.mark.parametrize("sampler, eta", [(ddnm, 0.85), (dds, 0.85), (ddnm, 0.0)])
def test_reference_dc_update_converges(sampler, eta):
    """DDNM / DDS with solver="paradigms" run ddim_dc's update (eta > 0: noise drawn as it does).  The
    hard data step makes the steps' map far from the identity: depth stays near the step count."""
    mask = torch.zeros(16, 16)
    mask[:, ::2] = 1
    mask[:, 6:10] = 1
    op = SingleCoilMRI(mask)
    y = op.forward(PRIOR.sample(1, generator=torch.Generator().manual_seed(7)))
    ref, nfe_ref = sampler(EPS, op, y, BETAS, STEPS, torch.Generator().manual_seed(1), eta=eta)
    stats = {}
    out, nfe = sampler(EPS, op, y, BETAS, STEPS, torch.Generator().manual_seed(1), eta=eta, solver="paradigms",
                       window=5, tol=1e-6, stats=stats)
    assert _rel(out, ref) < 1e-4
    assert nfe_ref == STEPS and nfe == stats["evaluations"] >= STEPS and stats["depth"] <= STEPS
    if eta == 0:
        assert stats["depth"] < STEPS


def test_network_window_call_equals_per_state_calls():
    from medrecon.methods.priors import network_eps

    model = random_unet_model(1000)
    support = torch.ones(1, 16, 16, dtype=torch.bool)
    support[..., :3] = False
    f = network_eps(model, support=support)
    x = torch.randn(3, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900, 500, 100])
    ref = torch.stack([f(x[k], t[k]) for k in range(3)])
    assert torch.allclose(f(x, t), ref, atol=1e-5)
    with pytest.raises(ValueError, match="DeepCache.*paradigms"):
        network_eps(model, cache=2)(x, t)


def test_bad_options_are_clear_errors():
    for kw, msg in [({"window": 0}, "window: expected an int >= 1"), ({"window": 2.5}, "window"),
                    ({"tol": -1.0}, "tol: expected a finite number >= 0"), ({"tol": float("nan")}, "tol"),
                    ({"max_iters": 0}, "max_iters: expected None or an int >= 1"),
                    ({"base": "pndm"}, r"base: expected one of \('ddim', 'ddpm'\)"),
                    ({"order": 2}, r"paradigms: unknown option\(s\) \['order'\]")]:
        with pytest.raises(ValueError, match=msg):
            _run("paradigms", **kw)
    with pytest.raises(ValueError, match="eps_fn: on a window"):
        sample(lambda x, t: x[0], _x_T(), "paradigms", STEPS, BETAS)
    op = SingleCoilMRI(torch.ones(16, 16))
    y = op.forward(PRIOR.sample(1, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"ddnm: unknown option\(s\) \['base'\] for solver 'paradigms'"):
        ddnm(EPS, op, y, BETAS, 5, torch.Generator(), solver="paradigms", base="ddpm")
