"""``medrecon train --recipe distill`` (``cli/recipes/distill.py``): a tiny run on the MRI recipes' data
leaves a distilled student, a rerun skips its finished rounds, and the flags are checked."""
import json

import pytest
import torch

from medrecon.cli.main import build_parser
from medrecon.cli.recipes.distill import _teacher
from medrecon.cli.train import _run
from medrecon.models.checkpoint import load_checkpoint, save_checkpoint
from medrecon.models.networks import UNetConfig, build_unet
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel
from medrecon.physics.fft import ifft2c

CFG = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=(1, 1), norm_num_groups=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(teacher checkpoint, smooth complex images [6, 32, 16] as in test_recipes_mri.py)."""
    d = tmp_path_factory.mktemp("distill-cli")
    model = DiffusionModel(build_unet(CFG, seed=0), VPSchedule(make_betas("linear", 1000)), "eps", network_config=CFG)
    teacher = save_checkpoint(d / "teacher", model, CFG)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(6, 32, 16, dtype=torch.complex64, generator=g)
    yy, xx = torch.meshgrid(torch.arange(32) - 16, torch.arange(16) - 8, indexing="ij")
    torch.save(ifft2c(k * torch.exp(-(yy ** 2 + xx ** 2) / 20.0)), d / "images.pt")
    return teacher, d / "images.pt"


def _train(*argv):
    return _run(build_parser().parse_args(["train", *argv]))


def _argv(files, out, *more):
    teacher, images = files
    return ["--recipe", "distill", "--teacher", str(teacher), "--target-steps", "2", "--steps-per-round", "2",
            "--data", str(images), "--out", str(out), "--batch-size", "2", "--ema-decay", "0", "--quiet",
            "--recipe-option", "size=16", "--recipe-option", "teacher_steps=4", *more]


def test_recipe_distills_and_resumes(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(*_argv(files, out)) == 0
    text = capsys.readouterr().out
    assert "round 1: 4 -> 2 steps" in text and "steps=2, grid [500, 0, -1]" in text
    d = load_checkpoint(out / "student").extra["distilled"]
    assert d["steps"] == 2 and d["grid"] == [500, 0, -1] and d["teacher"] == str(files[0])
    assert json.loads((out / "plan.json").read_text())["grids"] == [[750, 500, 250, 0, -1], [500, 0, -1]]
    log = (out / "round-01" / "log.jsonl").read_text()
    assert _train(*_argv(files, out)) == 0  # finished: nothing trained again
    assert (out / "round-01" / "log.jsonl").read_text() == log
    with pytest.raises(FileExistsError, match="holds a distillation run"):
        _train(*_argv(files, out, "--no-resume"))


def test_recipe_flags_are_checked(files, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="needs --teacher"):
        _train("--recipe", "distill", "--out", str(out))
    with pytest.raises(ValueError, match="--teacher: used by --recipe distill"):
        _train("--recipe", "vp", "--teacher", "brain128-vp", "--out", str(out))
    with pytest.raises(ValueError, match="--steps: recipe distill"):
        _train(*_argv(files, out, "--steps", "3"))
    with pytest.raises(ValueError, match="unknown for recipe 'distill'"):
        _train(*_argv(files, out, "--recipe-option", "acs=4"))
    with pytest.raises(ValueError, match="neither a shipped prior"):
        _train(*_argv(files, out)[:2], "--teacher", str(tmp_path / "nope"), *_argv(files, out)[4:])
    model, name = _teacher("brain128-vp", "cpu")
    assert name == "brain128-vp" and model.prediction_type == "eps"


def test_recipe_takes_multiscale_data(files, tmp_path):
    """``scales=1``: ``--data`` a multiscale.pt (here one 16-wide scale), as the MRI recipes."""
    images = torch.load(files[1], weights_only=True)
    torch.save({"sizes": [16], "images": {"16": images}}, tmp_path / "multiscale.pt")
    argv = _argv(files, tmp_path / "run", "--recipe-option", "scales=1")
    argv[argv.index("--data") + 1] = str(tmp_path / "multiscale.pt")
    assert _train(*argv) == 0
    assert load_checkpoint(tmp_path / "run" / "student").extra["distilled"]["steps"] == 2
