"""The shipped priors (``medrecon/priors/``, ``medrecon.builtin_priors``): the files are safetensors +
JSON only and match their documented config, the posterior methods default to them, and the VP prior
beats zero-filled on the demo file in a quick DDS run."""
import json

import pytest
import torch
from safetensors.torch import load_file

from medrecon.builtin_priors import BUILTIN_PRIORS, PRIORS, prior_path, resolve_checkpoint
from medrecon.models.checkpoint import load_checkpoint, load_model
from medrecon.models.networks import build_unet, preset


@pytest.mark.parametrize("name", [n for n in BUILTIN_PRIORS if PRIORS[n].kind in ("vp", "hfs", "distilled")])
def test_shipped_files_load_and_match_config(name):
    path = prior_path(name)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert (path / "model.safetensors").stat().st_size < 8 * 2 ** 20  # a few MB
    weights = load_file(str(path / "model.safetensors"))
    expected = build_unet(preset("brain128")).state_dict()
    assert set(weights) == set(expected) and all(weights[k].shape == expected[k].shape for k in expected)
    assert all(torch.isfinite(w).all() for w in weights.values())
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["files"] == {"model": "model.safetensors"}  # EMA weights only, no optimizer state
    ck = load_checkpoint(path)
    assert ck.network_config == preset("brain128") and ck.optimizer is None and ck.ema is None
    assert ck.extra["source_step"] == ck.step > 0
    model = load_model(path)
    if name == "brain128-vp":
        assert model.prediction_type == "eps" and ck.extra["objective"] == "eps"
        assert len(model.schedule.betas) == 1000
    elif PRIORS[name].kind == "distilled":  # its grid, its chain's eta, the teacher and the held-out record
        d = ck.extra["distilled"]
        assert model.prediction_type == "eps" and ck.extra["objective"] == "distill-chain"
        assert (d["steps"], d["grid"], d["eta"], d["teacher"]) == (4, [750, 500, 250, 0, -1], 0.0, "brain128-vp")
        rec = d["rounds"][0]
        assert rec["heldout_mse"] < rec["heldout_mse_before"] and rec["heldout_psnr"] > rec["heldout_psnr_before"]
    else:
        assert model.prediction_type == "score" and ck.extra["objective"] == "hfs"
        assert ck.extra["hfs"] == {"type": "hfs", "acs": 10, "beta_min": 0.1, "beta_max": 20.0, "region": "lines"}


def test_shipped_ddgan_is_the_generator_fdmr_loads():
    """``brain128-ddgan``: safetensors + JSON only, EMA generator weights (no optimizer, no EMA copy),
    the ``brain128`` U-Net inside, finite weights, T = 4; FDMR's default checkpoint."""
    from medrecon.methods.fdmr import load_fdmr_generator
    from medrecon.models.ddgan import load_ddgan

    path = prior_path("brain128-ddgan")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "discriminator.safetensors",
                                                      "generator.safetensors"]
    ck = load_ddgan(path)
    assert ck.opt_g is None and ck.opt_d is None and ck.ema is None and ck.extra["weights"] == "ema"
    assert ck.extra["source_step"] == ck.step > 0 and ck.config.num_steps == 4
    assert all(torch.isfinite(w).all() for w in load_file(str(path / "generator.safetensors")).values())
    G = load_fdmr_generator("", torch.device("cpu"))
    assert not any(p.requires_grad for p in G.parameters())


def test_names_and_errors(tmp_path):
    assert resolve_checkpoint("", "brain128-vp") == prior_path("brain128-vp")
    assert resolve_checkpoint("brain128-hfs", "brain128-vp") == prior_path("brain128-hfs")
    assert resolve_checkpoint(str(tmp_path), "brain128-vp") == tmp_path
    with pytest.raises(ValueError, match="brain128-vp, brain128-hfs"):
        prior_path("brain256")


def test_methods_default_to_the_builtin_priors(tmp_path):
    from medrecon.methods import priors as pm
    from medrecon.registry import get_method

    for name in ("dds", "ddnm", "diffpir", "dps", "ccdf", "score-mri", "spirit-diffusion"):
        assert get_method(name).options().checkpoint == "brain128-vp"
    assert get_method("hfs-sde").options().checkpoint == "brain128-hfs"
    model, betas = pm.load_prior("", torch.device("cpu"), "dds")
    assert pm.load_prior("brain128-vp", torch.device("cpu"), "dds")[0] is model and len(betas) == 1000
    model, extra = pm.load_score_prior("", torch.device("cpu"), "hfs-sde", pm.HFS_PRIOR)
    assert extra["hfs"]["acs"] == 10
    with pytest.raises(ValueError, match="not a medrecon checkpoint directory .* nor a builtin prior"):
        pm.load_prior(str(tmp_path), torch.device("cpu"), "dds")
    with pytest.raises(ValueError, match="checkpoint="):
        pm.load_score_prior("", torch.device("cpu"), "spirit-diffusion")
    with pytest.raises(ValueError, match="VE 'score' prior"):
        pm.load_score_prior("brain128-vp", torch.device("cpu"), "spirit-diffusion")
    assert pm.load_spirit_prior("", torch.device("cpu"))[0] is pm.load_prior("", torch.device("cpu"), "dds")[0]
    assert pm.load_spirit_prior("brain128-hfs", torch.device("cpu"))[0].prediction_type == "score"


def test_dds_on_the_shipped_prior_beats_zero_filled(tmp_path):
    """One demo slice (256x128 k-space, 128x128 recon), 4x: DDS with 10 NFE on the default prior."""
    from medrecon.datasets.demo import make_demo_file
    from medrecon.pipeline import MaskSpec, reconstruct_file

    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = make_demo_file(tmp_path / "demo.h5")
    mask = MaskSpec("equispaced_fraction", 4, 0.08, 0)
    zf = reconstruct_file(data, "zero-filled", mask, slices="1")
    dds = reconstruct_file(data, "dds", mask, slices="1", steps=10, seed=0)
    assert dds["nfe"] == 10
    assert dds["metrics"]["psnr"] > zf["metrics"]["psnr"] + 3, (dds["metrics"], zf["metrics"])


def test_support_zeroes_the_background_the_coils_do_not_see(tmp_path):
    """Where every coil map is 0 the data say nothing; with ``support`` (default) the samplers get the
    eps of a zero pixel there, so the image is 0 there; without it the prior leaves noise."""
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel
    from medrecon.physics.mri import MultiCoilMRI
    from medrecon.reconstruct import reconstruct

    cfg = preset("tiny")
    net = build_unet(cfg, seed=0)
    torch.nn.init.normal_(net.out[-1].conv.weight, std=0.1)  # a non-zero (untrained) eps
    ck = str(save_checkpoint(tmp_path / "ck", DiffusionModel(net, VPSchedule(make_betas()), "eps",
                                                            network_config=cfg), cfg))
    smaps = torch.ones(2, 16, 16, dtype=torch.complex64) / 2 ** 0.5
    smaps[:, :4] = 0
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, ::2] = True
    k = MultiCoilMRI(smaps, mask).forward(torch.randn(1, 16, 16, dtype=torch.complex64,
                                                      generator=torch.Generator().manual_seed(2)))
    for name in ("dds", "ddnm", "ccdf"):
        on = reconstruct(k, mask, name, smaps=smaps, checkpoint=ck, steps=4, seed=0).image
        off = reconstruct(k, mask, name, smaps=smaps, checkpoint=ck, steps=4, seed=0, support=False).image
        assert on[..., :4, :].abs().max() < 1e-5 * on.abs().max(), name
        assert off[..., :4, :].abs().max() > 1e-2 * off.abs().max(), name
        assert torch.isfinite(on).all()
