"""Timestep tuner on the stationary Gaussian prior, where the exact eps and the exact
probability-flow map are closed form (diagonal in k-space), so sampler error is the true error."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from medrecon.accel.timestep_tuner import (TimestepShifts, ddim_reference_trajectory, ddim_step,
                                           fit_timestep_shifts, leading_timesteps)

N, H = 1000, 16


def _scheduler():
    return DDIMScheduler(num_train_timesteps=N, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")


ACP = _scheduler().alphas_cumprod.double()
KY, KX = torch.meshgrid(torch.fft.fftfreq(H) * H, torch.fft.fftfreq(H) * H, indexing="ij")
LAM = (1.0 / (1.0 + (KY**2 + KX**2) / 4.0) ** 2).double()  # per-channel prior variance per frequency


def _abar_oracle(t):
    # the oracle's continuous schedule: linear interpolation of alphas_cumprod, 1 at t = -1
    t = float(t)
    if t < 0:
        return 1.0
    lo = min(int(math.floor(t)), N - 1)
    w = t - lo
    return float(ACP[lo] * (1 - w) + ACP[min(lo + 1, N - 1)] * w)


def exact_eps(x, t):
    # E[z | x_t] for x0 ~ N(0, F^H diag(LAM) F) per channel, x_t = a x0 + s z
    t = float(torch.as_tensor(t).flatten()[0])
    ab = _abar_oracle(t)
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    gain = (s / (a * a * LAM + s * s)).to(torch.float32)
    return torch.fft.ifft2(gain * torch.fft.fft2(x, norm="ortho"), norm="ortho")


def exact_flow(x, t_from, t_to):
    ab, ab2 = _abar_oracle(t_from), _abar_oracle(t_to)
    ratio = (((ab2 * LAM + 1 - ab2) / (ab * LAM + 1 - ab)).sqrt()).to(torch.float32)
    return torch.fft.ifft2(ratio * torch.fft.fft2(x, norm="ortho"), norm="ortho")


def _x_T(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn(b, H, H, 2, generator=g))


def _run_ddim(eps_fn, x, ts):
    for t, tn in zip(ts, ts[1:] + [-1]):
        x = ddim_step(x, eps_fn(x, t), torch.tensor(_abar_oracle(t)), torch.tensor(_abar_oracle(tn)))
    return x


def test_ddim_step_and_spacing_match_diffusers():
    sched = _scheduler()
    sched.set_timesteps(5)
    assert sched.timesteps.tolist() == leading_timesteps(N, 5)
    x = torch.randn(1, 2, H, H, generator=torch.Generator().manual_seed(3))
    ts = leading_timesteps(N, 5)
    for t, tn in zip(ts, ts[1:] + [-1]):
        eps = 0.3 * x + 0.1
        ref = sched.step(eps, t, x, eta=0.0).prev_sample
        ours = ddim_step(x, eps, ACP[t], ACP[tn] if tn >= 0 else torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-5)
        x = ref


def test_fine_reference_converges_to_exact_flow():
    ts = leading_timesteps(N, 4)
    x_T = _x_T(2, 0)
    ref = ddim_reference_trajectory(exact_eps, x_T, ACP, ts, fine=20)
    exact_end = exact_flow(x_T, ts[0], -1)
    coarse_end = _run_ddim(exact_eps, x_T, ts)
    assert (ref[-1] - exact_end).norm() < 0.2 * (coarse_end - exact_end).norm()


@pytest.mark.parametrize("use_exact_reference", [True, False])
def test_tuned_shifts_reduce_few_step_error_on_held_out_samples(use_exact_reference):
    steps = 5
    ts = leading_timesteps(N, steps)
    fit_x = _x_T(4, 1)
    reference = None
    if use_exact_reference:
        reference = [fit_x] + [exact_flow(fit_x, ts[0], t) for t in ts[1:] + [-1]]
    shifts = fit_timestep_shifts(exact_eps, fit_x, ACP, ts, reference=reference, fine=20)
    assert len(shifts.shifts) == steps and any(abs(s) > 1e-3 for s in shifts.shifts)

    test_x = _x_T(8, 2)
    exact_end = exact_flow(test_x, ts[0], -1)
    plain = (_run_ddim(exact_eps, test_x, ts) - exact_end).norm()
    tuned = (_run_ddim(shifts.wrap(exact_eps), test_x, ts) - exact_end).norm()
    assert tuned < 0.9 * plain, (float(tuned), float(plain), shifts.shifts)


def test_shifts_round_trip_and_wrap_checks():
    s = TimestepShifts(timesteps=[800, 400, 0], shifts=[12.5, -3.0, 0.25])
    again = TimestepShifts.from_dict(s.to_dict())
    assert again == s
    seen = []
    fn = s.wrap(lambda x, t: seen.append(t) or x)
    fn(torch.zeros(1), 800)
    fn(torch.zeros(2), torch.tensor([400, 400]))
    assert seen[0] == 812.5 and torch.equal(seen[1], torch.tensor([397.0, 397.0]))
    with pytest.raises(ValueError, match="tuned timesteps"):
        fn(torch.zeros(1), 600)
    assert s.wrap(lambda x, t: t, strict=False)(torch.zeros(1), 600) == 600
    with pytest.raises(ValueError, match="decreasing"):
        fit_timestep_shifts(exact_eps, _x_T(1, 0), ACP, [0, 500])
    with pytest.raises(ValueError, match="equal length"):
        TimestepShifts(timesteps=[1, 0], shifts=[0.0])


def test_shifts_travel_in_checkpoint_and_work_with_a_real_unet(tmp_path):
    from medrecon.models.checkpoint import load_checkpoint, save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", N)), "eps", network_config=cfg)
    ts = leading_timesteps(N, 3)
    x_T = _x_T(2, 4)
    shifts = fit_timestep_shifts(model.eps_fn, x_T, model.schedule.alphas_cumprod, ts, fine=4, grid=5,
                                 refine_iters=4)
    path = save_checkpoint(tmp_path / "ck", model, cfg, timestep_shifts=shifts.to_dict())
    again = TimestepShifts.from_dict(load_checkpoint(path).timestep_shifts)
    assert again == shifts
    out = _run_ddim(again.wrap(model.eps_fn), x_T, ts)
    assert out.shape == x_T.shape and torch.isfinite(torch.view_as_real(out)).all()
