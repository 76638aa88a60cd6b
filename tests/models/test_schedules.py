"""Schedules against diffusers' definitions and analytic identities."""
import math

import diffusers
import numpy as np
import pytest
import torch

from medrecon.models.schedules import (VE, VPContinuous, VPSchedule, convert, karras_sigmas, make_betas,
                                       spacing, to_eps, to_x0)


@pytest.mark.parametrize("kind,dname", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                        ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(kind, dname):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=dname, beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(make_betas(kind, 1000).float(), ref.betas, rtol=0, atol=0)
    s = VPSchedule(make_betas(kind, 1000))
    torch.testing.assert_close(s.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_vp_alpha_sigma():
    s = VPSchedule(make_betas("linear", 1000))
    t = torch.tensor([0, 10, 999])
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(s.alpha(t), s.alphas_cumprod[t].sqrt())
    assert float(s.alpha(-1)) == 1.0 and float(s.sigma(-1)) == 0.0
    assert float(s.alpha(4.5)) ** 2 == pytest.approx(float(s.alphas_cumprod[4:6].mean()))
    with pytest.raises(ValueError, match="t"):
        s.alpha(1000)
    torch.testing.assert_close(s.sigma_to_t(s.edm_sigma(torch.tensor([3.0, 500.0]))),
                               torch.tensor([3.0, 500.0], dtype=torch.float64), rtol=0, atol=1e-6)


def test_continuous_vp_matches_its_sde():
    """alpha(t) = exp(-1/2 int_0^t beta), beta(s) = beta_min + s (beta_max - beta_min)  (Song et al. Eq. 33)."""
    v = VPContinuous(0.1, 20.0)
    t = 0.37
    integral = 0.1 * t + 0.5 * t ** 2 * 19.9
    assert float(v.alpha(t)) == pytest.approx(math.exp(-0.5 * integral))
    assert float(v.sigma(t)) ** 2 + float(v.alpha(t)) ** 2 == pytest.approx(1.0)


def test_ve_and_karras():
    ve = VE(0.01, 50.0)
    assert float(ve.sigma(0)) == pytest.approx(0.01) and float(ve.sigma(1)) == pytest.approx(50.0)
    assert float(ve.t_of_sigma(ve.sigma(0.3))) == pytest.approx(0.3)
    ref = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    ref.set_timesteps(8)
    sig = ref.sigmas[:-1].double()
    torch.testing.assert_close(karras_sigmas(8, float(sig[-1]), float(sig[0])), sig, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(1.0, 0.5)


def test_prediction_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    a, s = 0.6, 0.8
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    score = -eps / s
    for kind, pred in (("eps", eps), ("x0", x0), ("v", v), ("score", score)):
        torch.testing.assert_close(to_eps(pred, kind, x_t, a, s), eps)
        torch.testing.assert_close(to_x0(pred, kind, x_t, a, s), x0)
        torch.testing.assert_close(convert(pred, kind, "v", x_t, a, s), v)
        torch.testing.assert_close(convert(pred, kind, "score", x_t, a, s), score)
    # VE (alpha = 1, sigma = 5)
    torch.testing.assert_close(to_x0(eps, "eps", x0 + 5 * eps, 1.0, 5.0), x0)
    with pytest.raises(ValueError, match="prediction"):
        to_eps(eps, "noise", x_t, a, s)


@pytest.mark.parametrize("kind", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [7, 10, 50])
def test_spacings_match_diffusers(kind, n):
    ref = diffusers.DDIMScheduler(timestep_spacing=kind)
    ref.set_timesteps(n)
    assert spacing(kind, n, 1000).tolist() == ref.timesteps.tolist()


def test_other_spacings():
    acp = VPSchedule(make_betas("linear", 1000)).alphas_cumprod
    q = spacing("quadratic", 10, 1000)
    assert q[0] == round(0.8 * 1000) and q[-1] == 0 and bool((q[:-1] > q[1:]).all())
    t = spacing("logsnr", 6, 1000, alphas_cumprod=acp)
    lsnr = VPSchedule(make_betas("linear", 1000)).log_snr(t)
    np.testing.assert_allclose(np.diff(lsnr.numpy()), np.diff(lsnr.numpy())[0], rtol=1e-3)
    ref = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    ref.set_timesteps(8)
    torch.testing.assert_close(spacing("karras", 8, 1000, alphas_cumprod=acp), ref.timesteps.double(),
                               rtol=1e-4, atol=0)  # diffusers works in float32
    with pytest.raises(ValueError, match="kind"):
        spacing("uniformish", 5)
    with pytest.raises(ValueError, match="steps"):
        spacing("leading", 0)
    with pytest.raises(ValueError, match="kind"):
        make_betas("sigmoid")


def test_vp_schedule_computes_on_the_device_of_t():
    """No host round trip per network call: alpha/sigma of a device tensor stay on that device (the
    meta device stands in for CUDA here: any .cpu() or host read-back of it would raise)."""
    import torch

    from medrecon.models.schedules import VPSchedule, make_betas

    sched = VPSchedule(make_betas("linear", 1000))
    t = torch.tensor([10.0, 999.0], device="meta")
    assert sched.alpha(t).device.type == "meta" and sched.sigma(t).device.type == "meta"
    cpu = sched.sigma(torch.tensor([10.0, 999.0]))
    assert cpu.device.type == "cpu" and float(cpu[1]) > float(cpu[0])
