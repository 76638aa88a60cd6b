"""Progressive distillation (``models/distill.py``, Salimans & Ho 2022, Alg. 2): the grids nest and end
on the samplers' grid, the target is two teacher DDIM steps, training lowers the loss, rounds resume
exactly, and a distilled checkpoint runs in the samplers on its own grid only."""
import math
import shutil

import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.checkpoint import load_checkpoint, load_model
from medrecon.models.distill import (abar_table, default_teacher_steps, distill, leading_grid, refine, round_grids,
                                     teacher_target)
from medrecon.models.networks import UNetConfig, build_unet
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel
from medrecon.physics.fft import ifft2c
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.ddim_dc import grid
from medrecon.reconstruct import reconstruct
from medrecon.solvers.base import alphas_cumprod
from medrecon.solvers.ddim import ddim

BETAS = make_betas("linear", 1000)
CFG = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1), norm_num_groups=8)


def _teacher() -> DiffusionModel:
    """A tiny eps network whose zero-initialised convs (MONAI's) are drawn, so eps is not 0."""
    net = build_unet(CFG, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("conv.weight") and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return DiffusionModel(net, VPSchedule(BETAS), "eps", network_config=CFG)


def _images(n: int = 24) -> list:
    """Smooth random complex 16x16 images, max |x| = 1."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(n, 16, 16, dtype=torch.complex64, generator=g)
    yy, xx = torch.meshgrid(torch.arange(16) - 8, torch.arange(16) - 8, indexing="ij")
    x = ifft2c(k * torch.exp(-(yy ** 2 + xx ** 2) / 10.0))
    return list(x / x.abs().flatten(1).amax(1)[:, None, None])


RUN = dict(target_steps=2, teacher_steps=8, steps_per_round=4, batch_size=2, lr=1e-4, ema_decay=0.9,
           val_items=4, save_every=2, teacher_name="tiny-teacher", device="cpu", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two rounds (8 -> 4 -> 2 steps), 4 training steps each, checkpoints every 2."""
    out = tmp_path_factory.mktemp("distill") / "run"
    return out, distill(_teacher(), _images(), out, **RUN)


def test_grids_nest_and_end_on_the_sampler_grid():
    for k in (2, 3, 4, 8, 16, 50):
        assert leading_grid(k, 1000) == grid(k, 1000).tolist()
    for k in (2, 4):  # 1000 divisible by 2k: the refinement is the leading grid itself
        assert refine(grid(k, 1000).tolist()) == grid(2 * k, 1000).tolist()
    grids = round_grids(4, 64, 1000)
    assert [len(g) - 1 for g in grids] == [64, 32, 16, 8, 4] and grids[-1] == grid(4, 1000).tolist()
    for parent, child in zip(grids, grids[1:]):
        assert parent[1::2] == child[:-1] and parent[-1] == child[-1] == -1  # every other teacher time
        assert all(a > m > b for a, m, b in zip(child[:-2], parent[2:-2:2], child[1:-1]))  # midpoints inside
    assert default_teacher_steps(4) == 64 and default_teacher_steps(48) == 96
    for bad in ((1, 4), (4, 4), (4, 24), (4, 2048)):
        with pytest.raises(ValueError, match="target_steps"):
            round_grids(*bad, 1000)
    with pytest.raises(ValueError, match="cannot be halved"):
        refine([3, 2, 0, -1])


def test_target_is_two_teacher_ddim_steps():
    """x~ of Alg. 2 against medrecon.solvers.ddim (eta 0) run by the teacher: z_t'' equals the teacher's
    two steps t -> t' -> t'' (one step into -1), and one DDIM step with x0 = x~ lands on it."""
    teacher = _teacher().eval()
    acp = abar_table(BETAS)
    assert torch.equal(acp, alphas_cumprod(BETAS))  # the samplers' abar table
    z = torch.randn(4, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    t, t_end = torch.tensor([750, 500, 250, 0]), torch.tensor([500, 250, 0, -1])
    x_tilde, z_end = teacher_target(teacher, z, t, t_end, acp)
    for j, (a, b) in enumerate(zip(t.tolist(), t_end.tolist())):
        ts, prev = ([a, (a + b) // 2], [(a + b) // 2, b]) if b >= 0 else ([a], [b])
        ref = ddim(teacher.eps_fn, z[j:j + 1], ts, acp, eta=0.0, prev_timesteps=prev)
        torch.testing.assert_close(z_end[j:j + 1], ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
        abar = float(acp[a])
        eps_student = (z[j:j + 1] - math.sqrt(abar) * x_tilde[j:j + 1]) / math.sqrt(1 - abar)
        one = ddim(lambda x, tt: eps_student, z[j:j + 1], [a], acp, eta=0.0, prev_timesteps=[b])
        torch.testing.assert_close(one, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_short_training_lowers_the_distillation_loss(tmp_path):
    r = distill(_teacher(), _images(), tmp_path, target_steps=2, teacher_steps=4, steps_per_round=40, batch_size=4,
                lr=1e-4, val_items=4, device="cpu", progress=False).rounds[0]
    # measured: held-out MSE 0.0155 -> 0.0077, weighted loss 0.0156 -> 0.0083
    assert r["heldout_mse"] < 0.7 * r["heldout_mse_before"]
    assert r["heldout_loss"] < 0.7 * r["heldout_loss_before"]


def test_checkpoints_record_the_distillation(run):
    out, result = run
    assert result.grid == grid(2, 1000).tolist() and len(result.rounds) == 2
    extra = load_checkpoint(out / "student").extra
    d = extra["distilled"]
    assert d["steps"] == 2 and d["grid"] == [500, 0, -1] and d["teacher"] == "tiny-teacher"
    assert d["teacher_grid"] == grid(4, 1000).tolist()
    assert [(r["round"], r["teacher_steps"], r["steps"]) for r in d["rounds"]] == [(1, 8, 4), (2, 4, 2)]
    assert all({"heldout_mse", "heldout_mse_before", "heldout_loss"} <= r.keys() for r in d["rounds"])
    first = load_checkpoint(out / "round-01" / "step-00000004").extra["distilled"]
    assert first["steps"] == 4 and first["grid"] == grid(4, 1000).tolist() and len(first["rounds"]) == 1


def test_resume_by_round_is_exact(run, tmp_path):
    """Delete the last round's final checkpoint: the rerun skips round 1 (not rewritten) and resumes
    round 2 from its step-2 checkpoint to the same bits."""
    src, _ = run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    shutil.rmtree(out / "round-02" / "step-00000004")
    shutil.rmtree(out / "student")
    first = out / "round-01" / "step-00000004" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    distill(_teacher(), _images(), out, **RUN)
    assert first.stat().st_mtime_ns == stamp
    for sub in ("student", "round-02/step-00000004"):
        a, b = load_checkpoint(src / sub), load_checkpoint(out / sub)
        for (k, v), w in zip(a.model.net.state_dict().items(), b.model.net.state_dict().values()):
            assert torch.equal(v, w), k
    assert load_checkpoint(out / "student").extra == load_checkpoint(src / "student").extra
    with pytest.raises(ValueError, match="steps_per_round"):
        distill(_teacher(), _images(), out, **{**RUN, "steps_per_round": 6})


def _coil_data():
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    x = GaussianPrior((16, 16)).sample(1, generator=torch.Generator().manual_seed(20))
    return MultiCoilMRI(smaps, mask).forward(x), mask, smaps


def test_samplers_run_a_distilled_checkpoint_on_its_grid_only(run):
    out, _ = run
    ck = str(out / "student")
    k, mask, smaps = _coil_data()
    for method, opts in (("ddnm", {}), ("dds", {}), ("ccdf", {"t0": 1.0})):
        r = reconstruct(k, mask, method, smaps=smaps, checkpoint=ck, steps=2, seed=1, **opts)
        assert torch.isfinite(r.image).all() and r.nfe == 2
    with pytest.raises(ValueError, match=r"distilled for steps=2 \(grid \[500, 0, -1\]\), but steps=3"):
        reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=3)
    with pytest.raises(ValueError, match="student.*distilled for 2 DDIM steps"):
        reconstruct(k, mask, "dds", smaps=smaps, checkpoint=ck, steps=2, solver="dpm-solver++")
    with pytest.raises(ValueError, match="method 'dps'.*distilled"):
        reconstruct(k, mask, "dps", smaps=smaps, checkpoint=ck, steps=2)
    # an intermediate round's student: its own grid (4 steps) runs, the final one's does not
    four = str(out / "round-01" / "step-00000004")
    assert reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=four, steps=4, seed=1).nfe == 4
    with pytest.raises(ValueError, match="steps=4"):
        reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=four, steps=2)
    assert load_model(ck).prediction_type == "eps"
