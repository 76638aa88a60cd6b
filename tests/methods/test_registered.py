"""The registered diffusion methods through ``medrecon.reconstruct``: their default checkpoint, tiny
checkpoints of every kind (VP eps, VE score), the Score-MRI variants, the errors of a wrong checkpoint.
(Moved from the sampler tests: tests/posterior/ tests the samplers themselves.)"""
import math
from pathlib import Path

import pytest
import torch

from medrecon.gaussian_prior import GaussianPrior
from medrecon.models.hfs_process import HFSSDE
from medrecon.models.schedules import make_betas
from medrecon.physics.mri import MultiCoilMRI
from medrecon.reconstruct import reconstruct
from medrecon.registry import get_method

BETAS = make_betas("linear", 1000)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _coil_data():
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    pr = GaussianPrior((16, 16))
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    k = MultiCoilMRI(smaps, mask).forward(pr.sample(1, generator=gen(20)))
    return k, mask, smaps


def _tiny_vp_checkpoint(path: Path) -> str:
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(BETAS), "eps", network_config=cfg)
    return str(save_checkpoint(path, model, cfg))


def _tiny_score_checkpoint(path: Path, hfs: HFSSDE | None = None) -> str:
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VE
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VE(0.01, 50.0), "score", network_config=cfg)
    extra = {"network": cfg} if hfs is None else {"network": cfg, "hfs": hfs.to_dict()}
    return str(save_checkpoint(path, model, extra))


# SPIRiT-Diffusion geometry: 4 coils whose maps are pure linear phases (tests/posterior/test_hfs_spirit_diffusion.py)
HS = WS = 16
C = 4
_w = torch.arange(WS) - WS // 2
SMAPS = (torch.stack([torch.exp(2j * math.pi * k * _w / WS).expand(HS, WS) for k in (0, 1, 2, 3)]) / math.sqrt(C)
         ).to(torch.complex64)


def test_registered_methods_checkpoint_option(tmp_path):
    """The default is the shipped VP prior (tests/methods/test_builtin_priors.py); a folder that is no
    checkpoint is refused by name."""
    k, mask, smaps = _coil_data()
    for name in ("dds", "ddnm", "diffpir", "dps", "ccdf", "score-mri"):
        assert get_method(name).defaults()["checkpoint"] == "brain128-vp"
        with pytest.raises(ValueError, match="not a medrecon checkpoint"):
            reconstruct(k, mask, name, smaps=smaps, checkpoint=str(tmp_path))


def test_registered_methods_run_a_tiny_checkpoint(tmp_path):
    ck = _tiny_vp_checkpoint(tmp_path / "ck")
    k, mask, smaps = _coil_data()
    for name, nfe in (("dds", 2), ("dps", 2), ("ccdf", 1), ("score-mri", 2 * 2 * 2)):
        r = reconstruct(k, mask, name, smaps=smaps, checkpoint=ck, steps=2, seed=1)
        assert r.image.shape == (1, 16, 16) and torch.isfinite(r.magnitude).all() and r.nfe == nfe
    a = reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=2).image
    assert torch.equal(a, reconstruct(k, mask, "ddnm", smaps=smaps, checkpoint=ck, steps=2).image)


def test_ccdf_init_option(tmp_path, monkeypatch):
    """init="l1-wavelet" diffuses the L1-wavelet reconstruction of the normalised k-space; the
    default ("cg-sense") leaves x_init to ccdf's CG-SENSE steps; anything else is refused."""
    import medrecon.methods.vp as vp
    from medrecon.methods.classical import L1WaveletOptions, l1_wavelet

    ck = _tiny_vp_checkpoint(tmp_path / "ck")
    k, mask, smaps = _coil_data()
    seen = []
    real_ccdf = vp.ccdf
    monkeypatch.setattr(vp, "ccdf", lambda *a, **kw: (seen.append(kw["x_init"]), real_ccdf(*a, **kw))[1])
    reconstruct(k, mask, "ccdf", smaps=smaps, checkpoint=ck, steps=2, normalize=False)
    r = reconstruct(k, mask, "ccdf", smaps=smaps, checkpoint=ck, steps=2, normalize=False, init="l1-wavelet")
    assert seen[0] is None and r.nfe == 1
    want = l1_wavelet(k * mask.unsqueeze(-3), mask, smaps, L1WaveletOptions(), None)[0]
    torch.testing.assert_close(seen[1], want)
    with pytest.raises(ValueError, match="init: expected one of"):
        reconstruct(k, mask, "ccdf", smaps=smaps, checkpoint=ck, steps=2, init="zero")


def test_registered_hfs_and_spirit_methods(tmp_path):
    pr = GaussianPrior((HS, WS))
    rho = pr.sample(4, generator=gen(20))
    mask = torch.zeros(1, WS, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:, 4:12] = True
    k = MultiCoilMRI(SMAPS, mask).forward(rho[:1])[0]
    r = reconstruct(k, mask, "spirit-diffusion", smaps=SMAPS, steps=2, seed=1)  # the shipped brain128-vp, lifted
    assert r.image.shape == (HS, WS) and torch.isfinite(r.magnitude).all() and r.nfe == 2
    ck = _tiny_score_checkpoint(tmp_path / "hfs", HFSSDE(acs=4))
    r = reconstruct(k, mask, "hfs-sde", smaps=SMAPS, checkpoint=ck, steps=2, seed=1)
    assert r.image.shape == (HS, WS) and torch.isfinite(r.magnitude).all() and r.nfe == 4
    with pytest.raises(ValueError, match="low frequencies"):
        reconstruct(k, mask, "hfs-sde", smaps=SMAPS, checkpoint=ck, steps=2, acs=12)
    r = reconstruct(k, mask, "spirit-diffusion", smaps=SMAPS, checkpoint=ck, steps=2, seed=1, n_corrector=1)
    assert r.image.shape == (HS, WS) and torch.isfinite(r.magnitude).all() and r.nfe == 2 * 2 * C  # per coil
    ck_vp = _tiny_vp_checkpoint(tmp_path / "vp")
    with pytest.raises(ValueError, match="VE 'score' prior"):
        reconstruct(k, mask, "hfs-sde", smaps=SMAPS, checkpoint=ck_vp, steps=2)
    r = reconstruct(k, mask, "spirit-diffusion", smaps=SMAPS, checkpoint=ck_vp, steps=3, seed=1)
    assert torch.isfinite(r.magnitude).all() and r.nfe == 3  # a VP image prior: one call per score


def test_registered_hybrid_variant(tmp_path):
    ck = _tiny_vp_checkpoint(tmp_path / "ck")
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / math.sqrt(2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    k = MultiCoilMRI(smaps, mask).forward(torch.randn(1, 16, 16, dtype=torch.complex64, generator=gen(1)))
    r = reconstruct(k, mask, "score-mri", smaps=smaps, checkpoint=ck, steps=3, variant="hybrid", m_steps=2, seed=1)
    assert r.image.shape == (1, 16, 16) and r.image.is_complex() and r.nfe == 3 * 2 * 2
    assert torch.isfinite(r.magnitude).all()
    with pytest.raises(ValueError, match="variant"):
        reconstruct(k, mask, "score-mri", smaps=smaps, checkpoint=ck, steps=3, variant="nope")


@pytest.mark.parametrize("variant", ["sense", "hybrid"])
def test_sense_variants_estimate_maps_when_not_given(tmp_path, variant):
    """Through ``reconstruct`` without smaps, the SENSE-based variants calibrate ESPIRiT maps
    themselves (as the needs_smaps methods do) and equal a run with those maps passed in."""
    from medrecon.datasets.demo import make_demo_file
    from medrecon.datasets.fastmri import FastMRIFile
    from medrecon.physics.coils import estimate_smaps
    from medrecon.physics.masks import make_mask

    with FastMRIFile(make_demo_file(tmp_path / "demo.h5")) as f:
        k = f.read_slice(1)["kspace"][..., ::2, :]  # 128x128 k-space, 8 coils
    mask = make_mask("equispaced_fraction", k.shape[-2:], acceleration=4, center_fraction=0.08, seed=0)
    got = reconstruct(k, mask, "score-mri", variant=variant, steps=2, m_steps=1, seed=0)
    maps = estimate_smaps(k * mask, mask, "score-mri")
    ref = reconstruct(k, mask, "score-mri", variant=variant, steps=2, m_steps=1, seed=0, smaps=maps)
    assert got.nfe == ref.nfe > 0 and torch.isfinite(got.image).all()
    torch.testing.assert_close(got.image, ref.image)
