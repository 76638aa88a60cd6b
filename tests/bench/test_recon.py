"""``medrecon bench recon`` (``medrecon.bench.recon``): rows are what ``medrecon.reconstruct`` gives,
outputs are written and never silently replaced, goal verdicts follow the measured numbers."""
import argparse
import json

import numpy as np
import pytest
import torch

from medrecon.bench.commands import recon as cmd
from medrecon.bench.recon import report, rows as rw, run as rr
from medrecon.datasets.fastmri import center_crop
from medrecon.metrics import evaluate
from medrecon.models.hfs_process import HFSSDE
from medrecon.options import method_pairs
from medrecon.physics.fft import ifft2c
from medrecon.reconstruct import reconstruct

SIZE = 32
# 32 columns: 2x with 8 ACS lines (ESPIRiT needs >= 8), and every 4th line + 8 ACS ("uniform")
MASKS = "equispaced_fraction:2:0.25,equispaced:4:0.25"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _checkpoint(path, objective: str, hfs: HFSSDE | None = None) -> str:
    """A randomly initialised tiny MONAI U-Net prior (the bench only needs a loadable one)."""
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VE, VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    sched = VPSchedule(make_betas("linear", 1000)) if objective == "eps" else VE(0.01, 50.0)
    net = build_unet(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # MONAI zero-initialises output convolutions: make every layer matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model = DiffusionModel(net, sched, objective, network_config=cfg)
    extra = {"network": cfg} if hfs is None else {"network": cfg, "hfs": hfs.to_dict()}
    return str(save_checkpoint(path, model, extra))


def _args(argv):
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    vp = _checkpoint(tmp / "vp", "eps")
    hfs = _checkpoint(tmp / "hfs", "score", HFSSDE(12))  # M_L of 12 lines: only in neither mask -> n/a
    hfs8 = _checkpoint(tmp / "hfs8", "score", HFSSDE(8))
    argv = ["--methods", "zero-filled,cg-sense,dds,ccdf,hfs-sde", "--masks", MASKS, "--slices", "1",
            "--size", str(SIZE), "--nfe", "3", "--solvers", "ddim", "--deepcache", "1,2",
            "--hfs-steps", "2", "-o", f"dds.checkpoint={vp}", "-o", f"ccdf.checkpoint={vp}",
            "-o", f"hfs-sde.checkpoint={hfs8}", "-o", "cg-sense.max_iter=4", "--out", str(tmp / "out")]
    code = cmd.main(_args(argv))
    return {"tmp": tmp, "argv": argv, "code": code, "vp": vp, "hfs": hfs, "out": tmp / "out",
            "rows": json.loads((tmp / "out" / "bench_recon.json").read_text())["rows"]}


def test_rows_are_what_reconstruct_gives(run):
    assert run["code"] == 0
    rows = run["rows"]
    data = rw.test_set(1, 1000, SIZE)
    checked = 0
    for r in rows:
        if r["method"] not in ("cg-sense", "dds") or r["deepcache"] != 1:
            continue
        preds = []
        for d in data:
            assert d["kspace"].shape[-2:] == (2 * SIZE, SIZE)  # readout-oversampled grid, as medrecon recon
            mask = rw.make_test_mask(r["mask"], tuple(d["kspace"].shape[-2:]), d["seed"])
            res = reconstruct(d["kspace"], mask, r["method"], seed=0, **r["options"])
            preds.append(center_crop(res.magnitude, (SIZE, SIZE)).numpy())
            assert res.nfe == r["nfe"]
        m = evaluate(np.stack([d["target"].numpy() for d in data]), np.stack(preds))
        assert (m["psnr"], m["ssim"], m["nmse"]) == (r["psnr"], r["ssim"], r["nmse"])
        checked += 1
    assert checked == 2 * 2  # cg-sense + dds ddim, two masks
    ccdf = [r for r in rows if r["method"] == "ccdf"]
    assert ccdf and all(r["nfe"] == 3 and r["options"]["steps"] == 15 for r in ccdf)  # t0 = 0.2


def test_deepcache_rows_use_the_methods_cache_option(run):
    from medrecon.methods import priors as pm

    rows = run["rows"]
    for mask in rw.split_list(MASKS):
        plain, cached = (next(r for r in rows if r["mask"] == mask and r["method"] == "dds" and r["deepcache"] == dc)
                         for dc in (1, 2))
        assert plain["nfe"] == cached["nfe"] == 3
        assert cached["options"]["cache"] == 2 and plain["options"]["cache"] == 1
        assert plain["psnr"] != cached["psnr"]  # the shallow path really ran on cached calls
    cpu = torch.device("cpu")
    model, _ = pm.load_prior(run["vp"], cpu, "dds")
    full = []
    handle = model.net.middle_block.register_forward_hook(lambda *a: full.append(1))
    try:
        d = rw.test_set(1, 1000, SIZE)[0]
        row, _ = rr.run_entry(rw.Entry("dds", {"checkpoint": run["vp"], "steps": 4}, "ddim", 2),
                              "equispaced:4:0.25", [d])
    finally:
        handle.remove()
    assert row.nfe == 4 and len(full) == 2  # 2 full U-Net passes, 2 cached ones
    assert pm.load_prior(run["vp"], cpu, "dds")[0] is model  # the loaded prior is untouched


def test_hfs_needs_its_low_frequencies(run):
    hfs = [r for r in run["rows"] if r["method"] == "hfs-sde"]
    # M_L = 8 lines: inside both masks (8 ACS lines), NFE = steps (predictor + 1 corrector)
    assert [r["status"] for r in hfs] == ["ok", "ok"] and all(r["nfe"] == 4 for r in hfs)
    data = rw.test_set(1, 1000, SIZE)
    # the checkpoint's 12-line block is narrowed to a mask's fewer ACS lines; an explicit acs is not
    row, img = rr.run_entry(rw.Entry("hfs-sde", {"checkpoint": run["hfs"], "steps": 2, "acs": 12}),
                            "equispaced:4:0.25", data)
    assert row.status == "n/a" and "low frequencies" in row.note and img is None


def test_outputs_and_refusal(run):
    out = run["out"]
    for name in rw.OUTPUTS:
        assert (out / name).stat().st_size > 0
    md = (out / "bench_recon.md").read_text()
    ok = [r for r in run["rows"] if r["status"] == "ok"]
    assert md.count("\n| ") - 1 == len(ok)  # header + one line per row
    assert "## Goals" in md
    meta = json.loads((out / "bench_recon.json").read_text())
    assert meta["slices"] == [1000] and set(meta["masks"]) == set(rw.split_list(MASKS))
    before = (out / "bench_recon.json").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        cmd.main(_args(run["argv"]))
    assert (out / "bench_recon.json").read_bytes() == before
    argv = [a for i, a in enumerate(run["argv"]) if a != "-o" and run["argv"][i - 1] != "-o"]
    argv[argv.index("--methods") + 1] = "zero-filled"
    assert cmd.main(_args(argv + ["--overwrite"])) == 0
    assert [r["method"] for r in json.loads((out / "bench_recon.json").read_text())["rows"]] == ["zero-filled"] * 2  # one per mask


def _row(mask, method, nfe, psnr, kind="diffusion"):
    return rw.Row(mask, method, "", 1, nfe, psnr, 0.5, 0.1, 1.0, 1, {}, kind)


def test_goal_verdicts():
    rows = [_row("8x-equispaced", "cg-sense", 0, 25.0, "classical"),
            _row("8x-equispaced", "l1-wavelet", 0, 26.0, "classical"),
            _row("8x-equispaced", "score-mri", 2000, 30.0),
            _row("8x-equispaced", "dds", 50, 29.6),
            _row("8x-equispaced", "dds", 10, 26.0)]
    g = {x["goal"]: x for x in report.check_goals(rows)}
    assert g["fast-vs-slow"]["met"] is True and "+0.40 dB" in g["fast-vs-slow"]["text"]
    assert g["above-classical-8x"]["met"] is False and "dds (26.00)" in g["above-classical-8x"]["text"]
    rows[3] = _row("8x-equispaced", "dds", 51, 29.6)  # > 50 NFE is slow
    rows[4] = _row("8x-equispaced", "dds", 10, 26.01)
    g = {x["goal"]: x for x in report.check_goals(rows)}
    assert g["fast-vs-slow"]["met"] is False and g["above-classical-8x"]["met"] is True
    g = report.check_goals([_row("4x-random", "dds", 10, 30.0)])
    assert [(x["goal"], x["met"]) for x in g] == [("fast-vs-slow", None)]  # no 8x goal at 4x


def test_plan_and_bad_inputs():
    e = rw.plan(["dds"], nfe=(10, 20), solvers=("pndm", "heun"), deepcache=(1, 3))
    assert [(x.solver, x.options["steps"], x.deepcache) for x in e] == [
        ("pndm", 11, 1), ("pndm", 11, 3), ("heun", 5, 1), ("heun", 5, 3), ("heun", 10, 1), ("heun", 10, 3)]
    full, crop = rw.test_set(1, 1000, SIZE)[0], rw.test_set(1, 1000, SIZE, fov="crop")[0]
    assert crop["kspace"].shape == (8, SIZE, SIZE) and torch.equal(full["target"], crop["target"])
    assert torch.allclose(center_crop(ifft2c(full["kspace"]), (SIZE, SIZE)), ifft2c(crop["kspace"]), atol=1e-6)
    e = rw.plan(["ddnm"], nfe=(10,), solvers=("ddim", "heun"), deepcache=(1,), options={"ddnm": {"solver": "ddim"}})
    assert [(x.solver, x.options["steps"]) for x in e] == [("ddim", 10)]
    args = _args(["--quick", "--nfe", "5"])
    cmd.quick_defaults(args)  # --quick fills what the user left at its default
    assert (args.nfe, args.slices, args.solvers, args.score_steps) == ("5", 1, "ddim,dpm-solver++", "10")
    with pytest.raises(ValueError, match=">= 1000"):
        rw.test_set(1, 999, SIZE)
    with pytest.raises(ValueError, match="preset"):
        rw.parse_mask("3x-spiral")
    with pytest.raises(ValueError, match="unknown solver"):
        rw.plan(["dds"], solvers=("rk45",))
    with pytest.raises(ValueError, match="no method"):
        method_pairs(["tol=1"], ["dds"])
    with pytest.raises(ValueError, match="valid methods"):
        rw.plan(["nope"])
    assert rw.parse_mask("10x-uniform-acs24") == ("equispaced", 10, 24 / 128)
    mask = rw.make_test_mask("10x-uniform-acs24", (128, 128), 1000)
    from medrecon.physics.masks import acs_width
    cols = np.nonzero(mask[0].numpy())[0]
    outer = cols[(cols < 52) | (cols >= 76)]
    assert acs_width(mask) == 24 and len(outer) >= 10 and (np.diff(outer) % 10 == 0).all()  # every 10th + ACS


def test_merge_pairs_runs_on_the_same_slices(tmp_path):
    """`--merge`: the goals see the rows of both runs (the slow reference from one, the fast grid from
    the other); runs on other slices and a row present twice are refused; outputs are not replaced."""
    meta = {"command": "c", "description": "d", "masks": {}, "slices": [1000, 1001], "threads": 1}
    fast = [_row("8x-equispaced", "cg-sense", 0, 25.0, "classical"), _row("8x-equispaced", "l1-wavelet", 0, 26.0, "classical"),
            _row("8x-equispaced", "ccdf", 50, 29.7)]
    slow = [_row("8x-equispaced", "score-mri", 2000, 30.0)]
    for name, rows, m in (("a", fast, meta), ("b", slow, meta), ("c", slow, {**meta, "slices": [1000]})):
        (tmp_path / name).mkdir()
        report.write_results(tmp_path / name, rows, m)
    assert cmd.main(_args(["--merge", str(tmp_path / "a"), str(tmp_path / "b" / "bench_recon.json"),
                          "--out", str(tmp_path / "m")])) == 0
    merged = json.loads((tmp_path / "m" / "bench_recon.json").read_text())
    assert [r["method"] for r in merged["rows"]] == ["cg-sense", "l1-wavelet", "ccdf", "score-mri"]
    g = {x["goal"]: x for x in merged["goals"]}
    assert g["fast-vs-slow"]["met"] is True and "+0.30 dB" in g["fast-vs-slow"]["text"]
    assert g["above-classical-8x"]["met"] is True
    assert (tmp_path / "m" / "bench_recon_psnr_nfe.png").stat().st_size > 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        cmd.main(_args(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]))
    with pytest.raises(ValueError, match="same test slices"):
        cmd.main(_args(["--merge", str(tmp_path / "a"), str(tmp_path / "c")]))
    with pytest.raises(ValueError, match="in both"):
        cmd.main(_args(["--merge", str(tmp_path / "b"), str(tmp_path / "b")]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cmd.main(_args(["--merge", str(tmp_path / "a"), str(tmp_path / "nope")]))
