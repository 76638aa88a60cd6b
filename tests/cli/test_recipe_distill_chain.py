"""``medrecon train --recipe distill-chain`` (``cli/recipes/distill_chain.py``): a tiny run leaves a
student on the DDNM grid with its held-out record, a rerun resumes, and the flags are checked."""
import json

import pytest

from medrecon.models.checkpoint import load_checkpoint

from .test_recipe_distill import _train, files  # noqa: F401  (the module fixture)


def _argv(files, out, *more):  # noqa: F811
    teacher, images = files
    return ["--recipe", "distill-chain", "--teacher", str(teacher), "--target-steps", "2", "--steps", "2",
            "--data", str(images), "--out", str(out), "--batch-size", "2", "--ema-decay", "0", "--quiet",
            "--recipe-option", "size=16", "--recipe-option", "teacher_steps=4", "--recipe-option", "bank_items=4",
            "--recipe-option", "val_items=2", "--recipe-option", "accelerations=4", *more]


def test_recipe_distills_the_chain_and_resumes(files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert _train(*_argv(files, out)) == 0
    text = capsys.readouterr().out
    assert "DDNM-4 -> DDNM-2: held-out MSE against the teacher" in text and "grid [500, 0, -1]" in text
    d = load_checkpoint(out / "student").extra["distilled"]
    assert (d["steps"], d["grid"], d["method"], d["teacher"]) == (2, [500, 0, -1], "chain", str(files[0]))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["accelerations"] == [4] and plan["teacher_steps"] == 4 and plan["train_steps"] == 2
    log = (out / "log.jsonl").read_text()
    assert _train(*_argv(files, out)) == 0  # finished: the rerun only re-evaluates
    assert (out / "log.jsonl").read_text().startswith(log)
    with pytest.raises(ValueError, match="started with other settings"):
        _train(*_argv(files, out, "--recipe-option", "eta=0.5"))


def test_recipe_flags_are_checked(files, tmp_path):  # noqa: F811
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="needs --teacher"):
        _train("--recipe", "distill-chain", "--out", str(out))
    with pytest.raises(ValueError, match="--steps-per-round: used by --recipe distill only"):
        _train(*_argv(files, out, "--steps-per-round", "3"))
    with pytest.raises(ValueError, match="unknown for recipe 'distill-chain'"):
        _train(*_argv(files, out, "--recipe-option", "acs=4"))
    with pytest.raises(ValueError, match="truth_weight=1.5: expected 0 <= truth_weight <= 1"):
        _train(*_argv(files, out, "--recipe-option", "truth_weight=1.5"))
    with pytest.raises(ValueError, match="snr=-1.0, cg_iters=0: expected 0"):
        _train(*_argv(files, out, "--recipe-option", "snr=-1"))
    with pytest.raises(ValueError, match="coils='x': expected a number"):
        _train(*_argv(files, out, "--recipe-option", "coils=x"))
    with pytest.raises(ValueError, match="eta=2.0: expected 0 <= eta <= 1"):
        _train(*_argv(files, out, "--recipe-option", "eta=2"))
    with pytest.raises(ValueError, match="accelerations='x'"):
        _train(*_argv(files, out, "--recipe-option", "accelerations=x"))
    with pytest.raises(ValueError, match="accelerations, kinds: expected some of"):
        _train(*_argv(files, out, "--recipe-option", "accelerations=3"))
    with pytest.raises(ValueError, match="poisson"):
        _train(*_argv(files, out, "--recipe-option", "kinds=random,poisson"))
    assert not out.exists()  # refused before anything is written


def test_whole_images_of_one_scale(files, tmp_path):  # noqa: F811
    """``whole=S``: the items are the whole [2 S, S] images of scale S, image-major with flips, so the
    held-out items are whole images that training never sees."""
    import torch

    from medrecon.cli.recipes.distill_chain import WholeImages

    images = torch.load(files[1], weights_only=True)  # [6, 32, 16]
    ds = WholeImages(images)
    assert len(ds) == 12 and torch.equal(ds[11], images[5].flip(-1)) and torch.equal(ds[10], images[5])
    torch.save({"sizes": [16], "images": {"16": images}}, tmp_path / "multiscale.pt")
    argv = _argv(files, tmp_path / "run", "--recipe-option", "whole=16")
    argv[argv.index("--data") + 1] = str(tmp_path / "multiscale.pt")
    assert _train(*argv) == 0
    bank = torch.load(tmp_path / "run" / "bank" / "val.pt", weights_only=True)
    assert bank["x"].shape == (2, 32, 16) and bank["mask"].shape == (2, 1, 16)
    with pytest.raises(ValueError, match=r"whole=24: --data .* holds the scales \[16\]"):
        _train(*[a if a != "whole=16" else "whole=24" for a in argv])
    # rows=R: R-row strips of the whole images; init=DIR: the student starts from that checkpoint
    strips = [*argv, "--recipe-option", "rows=8", "--recipe-option", f"init={tmp_path / 'run' / 'student'}"]
    strips[strips.index("--out") + 1] = str(tmp_path / "strips")
    assert _train(*strips) == 0
    bank = torch.load(tmp_path / "strips" / "bank" / "val.pt", weights_only=True)
    assert bank["x"].shape == (2, 8, 16) and bank["mask"].shape == (2, 1, 16)
    plan = json.loads((tmp_path / "strips" / "plan.json").read_text())
    assert plan["rows"] == 8 and plan["init"] == str(tmp_path / "run" / "student")
    # coils=C: SENSE strips with their maps in the bank; truth_weight, snr, cg_iters: recorded in the plan
    sense = [*strips, "--recipe-option", "coils=2", "--recipe-option", "truth_weight=0.5", "--recipe-option", "snr=30",
             "--recipe-option", "cg_iters=4"]
    sense[sense.index("--out") + 1] = str(tmp_path / "sense")
    assert _train(*sense) == 0
    assert torch.load(tmp_path / "sense" / "bank" / "val.pt", weights_only=True)["smaps"].shape == (2, 2, 8, 16)
    plan = json.loads((tmp_path / "sense" / "plan.json").read_text())
    assert (plan["coils"], plan["truth_weight"], plan["snr"], plan["cg_iters"]) == (2, 0.5, 30.0, 4)
    with pytest.raises(ValueError, match="rows=8: strips are cut from whole images; give whole=S too"):
        _train(*_argv(files, tmp_path / "bad", "--recipe-option", "rows=8"))
    with pytest.raises(ValueError, match="--recipe-option init 'nowhere': neither a shipped prior"):
        _train(*[a if a != "whole=16" else "init=nowhere" for a in argv])
