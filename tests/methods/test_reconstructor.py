"""``medrecon.reconstructor.Reconstructor``: same results as the functional API, one load."""
import math

import numpy as np
import pytest
import torch

from medrecon.datasets.demo import make_demo_file
from medrecon.datasets.dicom import read_dicom_series
from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.schedules import make_betas
from medrecon.physics.fft import fft2c
from medrecon.pipeline import MaskSpec, reconstruct_file
from medrecon.reconstruct import reconstruct
from medrecon.reconstructor import Reconstructor


def _data(n=1):
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:, 6:10] = True
    x = GaussianPrior((16, 16)).sample(n, generator=torch.Generator().manual_seed(0))
    return fft2c(x[:, None] * smaps), mask, smaps


def _checkpoint(path, seed):
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=seed), VPSchedule(make_betas("linear", 1000)),
                           "eps", network_config=cfg)
    return str(save_checkpoint(path, model, cfg))


def test_classical_matches_reconstruct_and_batches():
    k, mask, smaps = _data(2)
    rec = Reconstructor("cg-sense", max_iter=4)
    r = rec(k, mask, smaps=smaps)
    ref = reconstruct(k, mask, "cg-sense", smaps=smaps, max_iter=4)
    assert r.image.shape == (2, 16, 16) and torch.allclose(r.image, ref.image)
    assert r.options == rec.options and rec.options["max_iter"] == 4
    assert "max_iter=4" in repr(rec)


def test_errors_at_construction():
    with pytest.raises(ValueError, match="valid methods"):
        Reconstructor("nope")
    with pytest.raises(ValueError, match="valid options"):
        Reconstructor("cg-sense", iters=3)
    with pytest.raises(ValueError, match="nor a builtin prior"):
        Reconstructor("spirit-diffusion", device="cpu", checkpoint="no/such/dir")
    assert Reconstructor("spirit-diffusion", device="cpu").checkpoint == "brain128-vp"  # the lifted VP prior


def test_checkpoint_loaded_once(tmp_path, monkeypatch):
    from medrecon.models import checkpoint

    ck1, ck2 = _checkpoint(tmp_path / "a", 0), _checkpoint(tmp_path / "b", 1)
    loads = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda p, **kw: loads.append(p) or real(p, **kw))
    k, mask, smaps = _data()
    r1 = Reconstructor("ddnm", device="cpu", checkpoint=ck1, steps=2)
    r2 = Reconstructor("ddnm", checkpoint=ck2, steps=2)  # no device: loaded on first use
    assert len(loads) == 1
    a = r1(k, mask, smaps, seed=1)
    r2(k, mask, smaps, seed=1)
    b = r1(k, mask, smaps, seed=1)
    r2(k, mask, smaps, seed=1)
    assert len(loads) == 2 and a.nfe == 2 and torch.equal(a.image, b.image)
    ref = reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck1, steps=2, seed=1)
    assert torch.equal(a.image, ref.image)


def test_reconstruct_file(tmp_path):
    demo = make_demo_file(tmp_path / "d.h5", n_slices=2, coils=4, size=(64, 64))
    spec = MaskSpec("equispaced_fraction", 4, 0.16, 0)
    rec = Reconstructor("zero-filled").reconstruct_file(demo, spec, slices="1",
                                                         out=tmp_path / "r.nii.gz")
    ref = reconstruct_file(demo, "zero-filled", spec, slices="1")
    both = Reconstructor("zero-filled").reconstruct_file(demo, spec, batch_size=2)
    assert both["slices"] == [0, 2] and both["metrics"]["psnr"] == pytest.approx(
        reconstruct_file(demo, "zero-filled", spec)["metrics"]["psnr"], rel=1e-5)
    assert rec["slices"] == [1, 2] and rec["output"] == str(tmp_path / "r.nii.gz")
    assert (tmp_path / "r.json").is_file()
    np.testing.assert_allclose(rec["metrics"]["psnr"], ref["metrics"]["psnr"])
    # the Python API: a path string ending in "/" is a DICOM series folder
    rec = Reconstructor("zero-filled").reconstruct_file(demo, spec, out=f"{tmp_path}/dcm/")
    assert len(read_dicom_series(tmp_path / "dcm").files) == 2


def test_score_prior_method_loaded_once_with_device(tmp_path, monkeypatch):
    """hfs-sde's VE score prior goes through its own loader (a VP loader would reject it)."""
    from medrecon.models import checkpoint
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.hfs_process import HFSSDE
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VE
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VE(0.01, 50.0), "score", network_config=cfg)
    ck = str(save_checkpoint(tmp_path / "hfs", model, {"network": cfg,
                                                        "hfs": HFSSDE(4).to_dict()}))
    loads = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda p, **kw: loads.append(p) or real(p, **kw))
    rec = Reconstructor("hfs-sde", device="cpu", checkpoint=ck, steps=2)
    assert len(loads) == 1
    k, mask, smaps = _data()
    a, b = rec(k, mask, smaps, seed=0), rec(k, mask, smaps, seed=0)
    assert len(loads) == 1 and a.nfe == b.nfe > 0 and torch.equal(a.image, b.image)
