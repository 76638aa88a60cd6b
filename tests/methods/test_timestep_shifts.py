"""Timestep shifts stored with a checkpoint (`medrecon.accel.TimestepShifts`, saved by
``save_checkpoint(..., timestep_shifts=...)``) are applied by the methods on the DDIM-with-DC grid:
the network is queried at t + delta_t, only for the grid they were tuned for, and not with
``timestep_shifts="off"``."""
import math

import pytest
import torch

from medrecon.accel.timestep_tuner import TimestepShifts
from medrecon.methods.priors import PriorCache, load_prior
from medrecon.models.schedules import make_betas
from medrecon.physics.mri import MultiCoilMRI
from medrecon.reconstruct import reconstruct

SHIFTS = TimestepShifts(timesteps=[666, 333, 0], shifts=[25.0, -12.5, 0.25])  # the 3-step leading grid


def _checkpoint(path, shifts=None) -> str:
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    net = build_unet(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():  # MONAI zero-initialises the output and residual convs: eps would not vary with t
        if not p.any():
            torch.nn.init.normal_(p, std=0.1, generator=g)
    model = DiffusionModel(net, VPSchedule(make_betas("linear", 1000)), "eps", network_config=cfg)
    return str(save_checkpoint(path, model, cfg, timestep_shifts=None if shifts is None else shifts.to_dict()))


def _data():
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    x = torch.randn(1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    return MultiCoilMRI(smaps, mask).forward(x), mask, smaps


def _queried_times(ck, method, **options):
    """The times the network is called at in one reconstruction (and its image)."""
    cache = PriorCache()
    model, _ = load_prior(ck, torch.device("cpu"), method, cache=cache)
    times, eps = [], model.eps
    model.eps = lambda x, t: times.append(round(float(torch.as_tensor(t).flatten()[0]), 4)) or eps(x, t)
    k, mask, smaps = _data()
    image = reconstruct(k, mask, method, smaps=smaps, checkpoint=ck, seed=0, priors=cache, **options).image
    return times, image


@pytest.mark.parametrize("method", ["dds", "ddnm", "diffpir"])
def test_stored_shifts_move_the_network_times(tmp_path, method):
    ck, plain = _checkpoint(tmp_path / "tuned", SHIFTS), _checkpoint(tmp_path / "plain")
    times, tuned = _queried_times(ck, method, steps=3)
    assert times == [691.0, 320.5, 0.25]
    times, off = _queried_times(ck, method, steps=3, timestep_shifts="off")
    assert times == [666.0, 333.0, 0.0]
    times, untuned = _queried_times(plain, method, steps=3)
    assert times == [666.0, 333.0, 0.0] and torch.equal(off, untuned) and not torch.equal(tuned, untuned)
    times, _ = _queried_times(ck, method, steps=2)  # tuned for 3 steps: the 2-step grid runs unshifted
    assert times == [500.0, 0.0]


def test_ccdf_uses_the_shifts_of_its_tail_and_generic_solvers_none(tmp_path):
    ck = _checkpoint(tmp_path / "tuned", SHIFTS)
    times, _ = _queried_times(ck, "ccdf", steps=3, t0=0.7)  # the last two steps of the 3-step grid
    assert times == [320.5, 0.25]
    times, _ = _queried_times(ck, "dds", steps=3, solver="dpm-solver++")  # not the DDIM-with-DC grid
    assert 691.0 not in times and 320.5 not in times


def test_timestep_shifts_option_values(tmp_path):
    ck = _checkpoint(tmp_path / "tuned", SHIFTS)
    k, mask, smaps = _data()
    with pytest.raises(ValueError, match="timestep_shifts: expected one of"):
        reconstruct(k, mask, "dds", smaps=smaps, checkpoint=ck, steps=3, timestep_shifts="maybe")
