"""Chain distillation with the data step (``models/distill_chain*.py``): the problems are the fastMRI
masks at the methods' scale, the teacher's target is the samplers' own DDNM, training moves the K-step
chain towards it, the run resumes exactly, and the student runs in the samplers on its grid only."""
import json
import math
import shutil

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.distill_chain import (CENTER_FRACTIONS, blend_target, chain_problem, heldout, psnr_db,
                                          teacher_targets)
from medrecon.models.distill_chain_train import distill_chain
from medrecon.physics.mri import MultiCoilMRI
from medrecon.posterior.ddim_dc import grid
from medrecon.posterior.ddnm import ddnm
from medrecon.reconstruct import reconstruct

from .test_distill import BETAS, _images, _teacher

RUN = dict(steps=2, teacher_steps=6, bank_items=6, bank_batch=4, val_items=3, train_steps=4, batch_size=2,
           lr=1e-4, ema_decay=0.9, save_every=2, teacher_name="tiny-teacher", device="cpu", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain") / "run"
    return out, distill_chain(_teacher(), _images(), out, **RUN)


def test_problems_are_fastmri_masks_at_the_methods_scale():
    x = torch.stack(_images(6))
    p = chain_problem(x, torch.Generator().manual_seed(3), accelerations=(4, 8))
    A = p.operator()
    torch.testing.assert_close(A.forward(p.x), p.y)                      # y = M F x of the scaled truth
    torch.testing.assert_close(A.adjoint(p.y).abs().flatten(1).amax(1), torch.ones(6))  # normalize=True's scale
    frac = p.mask.float().mean((1, 2))
    assert p.mask.shape == (6, 1, 16) and all(0 < f <= 0.5 for f in frac.tolist())  # 4x or 8x with centre
    q = chain_problem(x, torch.Generator().manual_seed(3), accelerations=(4, 8))
    assert torch.equal(p.mask, q.mask) and torch.equal(p.x_T, q.x_T)     # all draws from the generator
    assert CENTER_FRACTIONS == {4: 0.08, 8: 0.04}
    with pytest.raises(ValueError, match="accelerations, kinds"):
        chain_problem(x, torch.Generator(), accelerations=(3,))
    with pytest.raises(ValueError, match="complex windows"):
        chain_problem(x.abs(), torch.Generator())


def test_strips_are_the_whole_images_rows():
    """rows=R: an R-row strip of each whole image, with the whole image's mask and scale; a column mask's
    projection on the strip equals the whole image's projection on those rows."""
    from medrecon.physics.mri import SingleCoilMRI

    x = torch.stack(_images(3)).repeat(1, 2, 1)                            # [3, 32, 16] "whole images"
    p = chain_problem(x, torch.Generator().manual_seed(7), rows=8)
    assert p.x.shape == p.y.shape == p.x_T.shape == (3, 8, 16) and p.mask.shape == (3, 1, 16)
    whole = SingleCoilMRI(p.mask, (32, 16))
    scale = whole.adjoint(whole.forward(x)).abs().flatten(1).amax(1)
    z = torch.randn(3, 32, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(8))
    proj = whole.adjoint(whole.forward(z))
    for b in range(3):
        offsets = [o for o in range(25) if torch.allclose(p.x[b] * scale[b], x[b, o:o + 8])]
        assert len(offsets) >= 1                                           # the strip is rows of its image
        o, A = offsets[0], SingleCoilMRI(p.mask[b:b + 1], (8, 16))
        torch.testing.assert_close(A.forward(p.x[b:b + 1]), p.y[b:b + 1])  # y = M F x of the strip
        torch.testing.assert_close(A.adjoint(A.forward(z[b:b + 1, o:o + 8]))[0], proj[b, o:o + 8])
    assert p.operator().adjoint(p.y).abs().flatten(1).amax(1).max() <= 1 + 1e-5  # the whole image's scale
    q = chain_problem(x, torch.Generator().manual_seed(7), rows=8)
    assert torch.equal(p.x, q.x) and torch.equal(p.mask, q.mask)
    with pytest.raises(ValueError, match="rows: expected 0"):
        chain_problem(x, torch.Generator(), rows=40)


def test_multicoil_strips_are_the_whole_images_sense_rows():
    """coils=C: SENSE problems with simulated maps (sum_c |S_c|^2 = 1); under a column mask the SENSE
    normal operator of a strip with the maps' rows is the whole image's on those rows (S is diagonal,
    the mask acts per row), so a strip is the whole image's problem; the scale is the whole image's."""
    import numpy as np

    from medrecon.datasets.simulate_mri import coil_maps

    x = torch.stack(_images(3)).repeat(1, 2, 1)                            # [3, 32, 16] "whole images"
    p = chain_problem(x, torch.Generator().manual_seed(7), rows=8, coils=4)
    assert p.y.shape == p.smaps.shape == (3, 4, 8, 16) and p.x.shape == (3, 8, 16)
    torch.testing.assert_close(p.smaps.abs().square().sum(1), torch.ones(3, 8, 16))
    A = p.operator()
    assert isinstance(A, MultiCoilMRI)
    torch.testing.assert_close(A.forward(p.x), p.y)                       # y = M F S x of the strip
    assert A.adjoint(p.y).abs().flatten(1).amax(1).max() <= 1 + 1e-5      # at most the whole image's max
    S = torch.from_numpy(coil_maps(4, (32, 16), (16, 16), np.random.default_rng(0)))
    whole = MultiCoilMRI(S, p.mask[0])
    z = torch.randn(32, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(8))
    strip = MultiCoilMRI(S[:, 5:13], p.mask[0])
    torch.testing.assert_close(strip.normal(z[5:13]), whole.normal(z)[5:13])
    q = chain_problem(x, torch.Generator().manual_seed(7), rows=8, coils=4)
    assert torch.equal(p.smaps, q.smaps) and torch.equal(p.y, q.y)        # all draws from the generator
    with pytest.raises(ValueError, match="coils: expected 0"):
        chain_problem(x, torch.Generator(), coils=-1)


def test_noisy_problems_are_the_simulators_noise_on_the_same_problem():
    """snr=s: the same problem as snr=0 from the same generator (truth, mask, maps, start noise) plus
    masked complex Gaussian k-space noise of std sqrt(mean |x|^2 / C) / s (the simulator's definition,
    `simulate_mri_volume`), scaled with the problem; a strip's noise is the whole image's on those rows
    (A^H y of the strip = the whole image's A^H y on the same rows with the same draws)."""
    x = torch.stack(_images(4)).repeat(1, 4, 4)                            # [4, 64, 64]
    for rows, coils in ((0, 0), (0, 4), (16, 3)):
        clean = chain_problem(x, torch.Generator().manual_seed(2), rows=rows, coils=coils)
        noisy = chain_problem(x, torch.Generator().manual_seed(2), rows=rows, coils=coils, snr=5.0)
        for k in ("mask", "x_T", "smaps"):
            a, b = getattr(clean, k), getattr(noisy, k)
            assert (a is None and b is None) or torch.equal(a, b)
        scale = clean.x.abs().flatten(1).amax(1) / noisy.x.abs().flatten(1).amax(1)  # clean / noisy scale
        torch.testing.assert_close(noisy.x * scale[:, None, None], clean.x)
        n = noisy.y - clean.y * (1 / scale).view(-1, *[1] * (clean.y.ndim - 1))
        m = noisy.mask[:, None] if coils else noisy.mask
        assert torch.all(n[~m.expand_as(n)] == 0)                        # noise only on the sampled columns
        sigma = (x.abs().square().flatten(1).mean(1) / max(coils, 1)).sqrt() / 5.0
        measured = (n.abs().square().flatten(1).sum(1) / m.expand_as(n).flatten(1).sum(1)).sqrt()
        if not rows:  # the noise std in the unscaled k-space: measured x the noisy problem's scale
            unscaled = measured * x.abs().flatten(1).amax(1) / noisy.x.abs().flatten(1).amax(1)
            torch.testing.assert_close(unscaled, sigma, rtol=0.1, atol=0)
    from medrecon.models.distill_chain import _measure  # the strip of S x + w is the whole image's rows

    g = torch.Generator().manual_seed(3)
    xw, w = (torch.randn(*sh, dtype=torch.complex64, generator=g) for sh in ((64, 16), (3, 64, 16)))
    S = torch.randn(3, 64, 16, dtype=torch.complex64, generator=g)
    mask = torch.rand(1, 1, 16, generator=g) < 0.5
    whole = MultiCoilMRI(S[None], mask)
    strip = MultiCoilMRI(S[None, :, 20:36], mask)
    torch.testing.assert_close(strip.adjoint(_measure(strip, xw[None, 20:36], w[None, :, 20:36], mask)),
                               whole.adjoint(_measure(whole, xw[None], w[None], mask))[:, 20:36])
    with pytest.raises(ValueError, match="snr: expected 0"):
        chain_problem(x, torch.Generator(), snr=-1.0)


def test_teacher_target_is_the_samplers_ddnm_and_data_consistent():
    teacher = _teacher().eval()
    p = chain_problem(torch.stack(_images(3)), torch.Generator().manual_seed(4))
    eps = lambda z, t: teacher.eps(z, t)  # noqa: E731
    out = teacher_targets(eps, p, BETAS, 6, 0.85, torch.Generator().manual_seed(5))
    ref, nfe = ddnm(eps, p.operator(), p.y, BETAS, 6, torch.Generator().manual_seed(5), eta=0.85, x_T=p.x_T)
    assert nfe == 6 and torch.equal(out, ref)
    torch.testing.assert_close(p.operator().forward(out), p.y, rtol=0, atol=1e-5)  # the last step's projection
    assert psnr_db(p.x, p.x).min() > 150


def test_training_moves_the_chain_towards_the_teacher(tmp_path):
    r = distill_chain(_teacher(), _images(), tmp_path, **{**RUN, "train_steps": 30, "lr": 3e-3, "ema_decay": None,
                                                          "save_every": None, "bank_items": 12})
    rec = r.record
    # measured: held-out MSE against the (random, tiny) teacher's DDNM-6 477.5 -> 354.2
    assert rec["heldout_mse"] < 0.85 * rec["heldout_mse_before"]
    assert math.isfinite(rec["heldout_psnr"]) and rec["teacher_psnr"] == rec["teacher_psnr_before"]


def test_truth_weight_and_coils_are_recorded(tmp_path):
    """truth_weight=w: training on (1 - w) teacher + w truth has the gradient of (1 - w)|s - teacher|^2 +
    w|s - truth|^2; w = 1 moves the chain towards the truth; coils=C banks SENSE problems with their maps;
    the plan and checkpoint record both."""
    g = torch.Generator().manual_seed(5)
    t, x = (torch.randn(4, 8, 8, dtype=torch.complex64, generator=g) for _ in range(2))
    s = torch.randn(4, 8, 8, dtype=torch.complex64, generator=g, requires_grad=True)
    sq = lambda d: torch.view_as_real(d).square().sum()  # noqa: E731
    for w in (0.0, 0.3, 1.0):
        (a,) = torch.autograd.grad(sq(s - blend_target(t, x, w)), s)
        (b,) = torch.autograd.grad((1 - w) * sq(s - t) + w * sq(s - x), s)
        torch.testing.assert_close(a, b)
    assert blend_target(t, x, 0.0) is t
    settings = {**RUN, "train_steps": 30, "lr": 3e-3, "ema_decay": None, "save_every": None, "bank_items": 12}
    r = distill_chain(_teacher(), _images(), tmp_path / "w1", **settings, truth_weight=1.0)
    # measured: held-out PSNR against the truth -2.8 -> 6.9 dB (pure distillation of this tiny random
    # teacher, whose DDNM-6 is at -24.1 dB: -2.8 -> -12.3)
    assert r.record["heldout_psnr"] > r.record["heldout_psnr_before"] + 3
    assert json.loads((tmp_path / "w1" / "plan.json").read_text())["truth_weight"] == 1.0
    assert load_checkpoint(tmp_path / "w1" / "student").extra["distilled"]["truth_weight"] == 1.0
    mc = distill_chain(_teacher(), _images(), tmp_path / "mc", **{**RUN, "train_steps": 2, "save_every": None},
                       coils=2, snr=20.0, cg_iters=3)
    assert torch.load(tmp_path / "mc" / "bank" / "val.pt", weights_only=True)["smaps"].shape == (3, 2, 16, 16)
    d = load_checkpoint(tmp_path / "mc" / "student").extra["distilled"]
    assert (d["coils"], d["snr"], d["cg_iters"]) == (2, 20.0, 3)      # cg_iters: the student's default (methods)
    assert json.loads((tmp_path / "mc" / "plan.json").read_text())["snr"] == 20.0
    from medrecon.methods.distilled import default_cg_iters
    from medrecon.methods.vp import DDNMOptions
    assert default_cg_iters(DDNMOptions(checkpoint=str(tmp_path / "mc" / "student"), steps=2), "ddnm") == 3
    assert math.isfinite(mc.record["heldout_psnr"]) and math.isfinite(mc.record["teacher_psnr"])
    with pytest.raises(ValueError, match=r"truth_weight: expected 0 .* got 1.5"):
        distill_chain(_teacher(), _images(), tmp_path / "bad", **RUN, truth_weight=1.5)
    assert not (tmp_path / "bad").exists()


def test_checkpoint_records_the_chain(run):
    out, result = run
    d = load_checkpoint(out / "student").extra["distilled"]
    assert d["steps"] == 2 and d["grid"] == grid(2, 1000).tolist() == result.grid
    assert d["teacher_grid"] == grid(6, 1000).tolist() and d["teacher"] == "tiny-teacher"
    assert (d["method"], d["data_step"], d["eta"]) == ("chain", "ddnm", 0.85)
    rec = d["rounds"][0]
    assert {"heldout_mse", "heldout_mse_before", "heldout_psnr", "teacher_psnr"} <= rec.keys()
    assert sorted(p.name for p in (out / "bank").iterdir()) == ["chunk-0000.pt", "chunk-0001.pt", "val.pt"]


def test_resume_is_exact_and_settings_are_checked(run, tmp_path):
    """Delete the last checkpoint, the student and one bank chunk: the rerun recomputes the chunk to the
    same bits and resumes training from step 2 to the same weights."""
    src, _ = run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    for sub in ("step-00000004", "student"):
        shutil.rmtree(out / sub)
    (out / "bank" / "chunk-0001.pt").unlink()
    distill_chain(_teacher(), _images(), out, **RUN)
    a = torch.load(src / "bank" / "chunk-0001.pt", weights_only=True)
    b = torch.load(out / "bank" / "chunk-0001.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for sub in ("student", "step-00000004"):
        ma, mb = load_checkpoint(src / sub).model.net.state_dict(), load_checkpoint(out / sub).model.net.state_dict()
        assert all(torch.equal(v, mb[k]) for k, v in ma.items())
    with pytest.raises(ValueError, match="teacher_steps"):
        distill_chain(_teacher(), _images(), out, **{**RUN, "teacher_steps": 8})
    with pytest.raises(ValueError, match="train_steps"):  # shorter than its last checkpoint (step 4)
        distill_chain(_teacher(), _images(), out, **{**RUN, "train_steps": 3})
    longer = distill_chain(_teacher(), _images(), out, **{**RUN, "train_steps": 6})  # goes on from step 4
    assert longer.record["train_steps"] == 6 and (out / "step-00000006").is_dir()
    assert json.loads((out / "plan.json").read_text())["train_steps"] == 6
    distill_chain(_teacher(), _images(), out, **{**RUN, "teacher_steps": 8}, resume=False, overwrite=True)
    assert load_checkpoint(out / "student").extra["distilled"]["teacher_grid"] == grid(8, 1000).tolist()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="steps < teacher_steps"):
        distill_chain(_teacher(), _images(), tmp_path, **{**RUN, "steps": 6})
    with pytest.raises(ValueError, match="held-out"):
        distill_chain(_teacher(), _images(3), tmp_path, **RUN)
    with pytest.raises(ValueError, match="rows: expected 0 .* multiple of the network's downsampling factor"):
        distill_chain(_teacher(), _images(), tmp_path, **RUN, rows=3)
    other = _teacher()
    other.schedule = type(other.schedule)(other.schedule.betas * 0.5)
    with pytest.raises(ValueError, match="init 'other': expected the teacher's network"):
        distill_chain(_teacher(), _images(), tmp_path, **RUN, init=other, init_name="other")
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_init_starts_the_student_from_another_checkpoint(run, tmp_path):
    """init=an earlier student: the held-out record's 'before' is that student's, and the plan names it."""
    src, first = run
    out = tmp_path / "again"
    r = distill_chain(_teacher(), _images(), out, **{**RUN, "train_steps": 1, "save_every": None},
                      init=first.student, init_name="first")
    assert r.record["heldout_mse_before"] == pytest.approx(first.record["heldout_mse"], rel=1e-5)
    assert json.loads((out / "plan.json").read_text())["init"] == "first"
    assert load_checkpoint(out / "student").extra["distilled"]["init"] == "first"


def test_samplers_run_the_student_on_its_grid_only(run):
    out, _ = run
    ck = str(out / "student")
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    k = MultiCoilMRI(smaps, mask).forward(torch.stack(_images(1)))
    for method in ("ddnm", "dds"):
        r = reconstruct(k, mask, method, smaps=smaps, checkpoint=ck, steps=2, seed=1)
        assert torch.isfinite(r.image).all() and r.nfe == 2
    with pytest.raises(ValueError, match=r"distilled for steps=2 \(grid \[500, 0, -1\]\), but steps=4"):
        reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=4)


def test_the_students_eta_is_the_methods_default(tmp_path):
    """A chain student trained at student_eta = 0 runs at eta 0 unless eta is given; other checkpoints
    keep DDNM's 0.85; a bad eta names the option."""
    from medrecon.methods.distilled import ETA, default_eta
    from medrecon.methods.vp import DDNMOptions, DDSOptions

    out = tmp_path / "run"
    distill_chain(_teacher(), _images(), out, **{**RUN, "student_eta": 0.0, "train_steps": 1, "save_every": None})
    d = load_checkpoint(out / "student").extra["distilled"]
    assert (d["eta"], d["teacher_eta"]) == (0.0, 0.85)
    ck = str(out / "student")
    assert default_eta(DDNMOptions(checkpoint=ck, steps=2), "ddnm") == 0.0
    assert default_eta(DDSOptions(checkpoint=ck, steps=2, eta=0.5), "dds") == 0.5
    assert default_eta(DDNMOptions(), "ddnm") == ETA == 0.85
    with pytest.raises(ValueError, match="ddnm option eta: expected 0 <= eta <= 1, got 1.5"):
        default_eta(DDNMOptions(eta=1.5), "ddnm")


def test_the_exported_students_cg_iters_is_the_methods_default(run, tmp_path):
    """export_prior(..., cg_iters=N) records the data step's CG count a chain student was tuned for;
    ddnm / dds / ccdf use it unless cg_iters is given; other checkpoints keep 10; bad values are named."""
    from medrecon.builtin_priors import export_prior
    from medrecon.methods.distilled import CG_ITERS, default_cg_iters
    from medrecon.methods.vp import CCDFOptions, DDNMOptions, DDSOptions

    src, _ = run
    ck = export_prior(src / "step-00000004", tmp_path / "tuned", weights="ema", cg_iters=7)
    d = load_checkpoint(ck).extra["distilled"]
    assert d["cg_iters"] == 7 and d["method"] == "chain" and d["grid"] == grid(2, 1000).tolist()
    assert default_cg_iters(DDNMOptions(checkpoint=str(ck), steps=2), "ddnm") == 7
    assert default_cg_iters(CCDFOptions(checkpoint=str(ck), steps=2), "ccdf") == 7
    assert default_cg_iters(DDSOptions(checkpoint=str(ck), steps=2, cg_iters=3), "dds") == 3
    assert default_cg_iters(DDNMOptions(checkpoint=str(src / "student"), steps=2), "ddnm") == CG_ITERS == 10
    assert default_cg_iters(DDNMOptions(), "ddnm") == 10
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    smaps[1] *= torch.exp(1j * torch.linspace(0, 3, 16))[None]
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::3] = True
    k = MultiCoilMRI(smaps, mask).forward(torch.stack(_images(1)))
    one = export_prior(src / "step-00000004", tmp_path / "one", weights="ema", cg_iters=1)
    run_ = lambda c, **o: reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=str(c), steps=2, seed=1, **o).image  # noqa: E731
    assert torch.equal(run_(one), run_(one, cg_iters=1))              # the recorded count is what runs
    assert not torch.equal(run_(one), run_(one, cg_iters=10))
    with pytest.raises(ValueError, match="ddnm option cg_iters: expected >= 1, got 0"):
        default_cg_iters(DDNMOptions(cg_iters=0), "ddnm")
    with pytest.raises(ValueError, match="cg_iters=0: expected >= 1 and a chain-distilled checkpoint"):
        export_prior(src / "step-00000004", tmp_path / "bad", weights="ema", cg_iters=0)
    assert not (tmp_path / "bad").exists()


def test_an_exported_intermediate_checkpoint_gets_the_runs_heldout_record(run, tmp_path):
    """Intermediate checkpoints keep only round_state.before; export_chain_student adds the record the run computes
    at its end (`intermediate_record`, on bank/val.pt) for the exported weights: on the final step with its
    record removed it is the run's own record, bit for bit; a checkpoint that has its record keeps it."""
    from medrecon.models.distill_chain_train import export_chain_student

    src, result = run
    copy = tmp_path / "run"
    shutil.copytree(src, copy)
    cfg_file = copy / "step-00000004" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    assert cfg["extra"]["distilled"]["rounds"] == [result.record]
    cfg["extra"]["distilled"]["rounds"] = []
    cfg_file.write_text(json.dumps(cfg))
    rec = load_checkpoint(export_chain_student(copy / "step-00000004", tmp_path / "mid", weights="ema")).extra["distilled"]["rounds"]
    assert rec == [result.record]
    kept = load_checkpoint(export_chain_student(src / "step-00000004", tmp_path / "end", weights="ema", cg_iters=3)).extra
    assert kept["distilled"]["rounds"] == [result.record] and kept["distilled"]["cg_iters"] == 3
    mid = load_checkpoint(export_chain_student(src / "step-00000002", tmp_path / "two", weights="raw")).extra["distilled"]["rounds"]
    assert len(mid) == 1 and mid[0]["train_steps"] == 2 and mid[0]["heldout_mse"] != result.record["heldout_mse"]
