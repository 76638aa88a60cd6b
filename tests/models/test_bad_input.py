"""Errors a user can cause in the diffusion core name the input and list what is valid (issue 4,
"Bad input"): unknown schedule / spacing / preset / prediction names, a checkpoint whose
prediction type does not match, timesteps beyond the training horizon, unsupported DeepCache nets."""
import json

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint, load_model, save_checkpoint, schedule_from_dict
from medrecon.models.networks import build_unet, preset
from medrecon.models.schedules import BETA_KINDS, PREDICTIONS, SPACINGS, VPSchedule, convert, make_betas, spacing
from medrecon.models.wrapper import DiffusionModel


def _all_listed(names, message):
    return all(n in message for n in names)


def test_unknown_schedule_and_spacing_names_list_the_valid_ones():
    with pytest.raises(ValueError) as e:
        make_betas("sigmoid")
    assert _all_listed(BETA_KINDS, str(e.value)) and "sigmoid" in str(e.value)
    with pytest.raises(ValueError) as e:
        spacing("uniformish", 5)
    assert _all_listed(SPACINGS, str(e.value))
    with pytest.raises(ValueError) as e:
        convert(torch.zeros(1), "epsilon", "x0", torch.zeros(1), 1.0, 0.0)
    assert _all_listed(PREDICTIONS, str(e.value))
    with pytest.raises(ValueError) as e:
        preset("huge")
    assert "tiny" in str(e.value) and "small" in str(e.value)
    with pytest.raises(ValueError, match="'vp'.*'ve'"):
        schedule_from_dict({"type": "subvp"})


def test_timesteps_beyond_the_training_horizon():
    sched = VPSchedule(make_betas("linear", 100))
    with pytest.raises(ValueError, match=r"training horizon.*\[-1, 99\].*100 training timesteps"):
        sched.abar(100)
    with pytest.raises(ValueError, match="training horizon"):
        sched.abar(torch.tensor([5.0, 250.0]))
    with pytest.raises(ValueError, match=r"steps.*\[1, 100\]"):
        spacing("leading", 101, 100)
    model = DiffusionModel(build_unet("tiny", seed=0), sched, "eps")
    with pytest.raises(ValueError, match="training horizon"):
        model.eps(torch.zeros(1, 16, 16, dtype=torch.complex64), 999)


def _saved(tmp_path, ptype="eps"):
    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 1000)), ptype, network_config=cfg)
    return save_checkpoint(tmp_path / "ck", model, cfg)


def test_prediction_type_mismatch_with_checkpoint(tmp_path):
    path = _saved(tmp_path, "eps")
    for loader in (load_checkpoint, load_model):
        with pytest.raises(ValueError, match=r"config\.json.*predicts 'eps'.*'v' was requested"):
            loader(path, prediction_type="v")
    with pytest.raises(ValueError, match=r"prediction_type.*eps.*x0.*v.*score"):
        load_checkpoint(path, prediction_type="epsilon")
    assert load_model(path, prediction_type="eps").prediction_type == "eps"
    # a config whose prediction type is not one medrecon knows is refused, naming the file
    cfg = json.loads((path / "config.json").read_text())
    cfg["prediction_type"] = "v_prediction"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*unknown prediction type 'v_prediction'.*'eps'"):
        load_checkpoint(path)


def test_training_objective_must_match_the_model(tmp_path):
    from medrecon.models.train import train

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 1000)), "v", network_config=cfg)
    with pytest.raises(ValueError, match="objective 'eps'.*predicts 'v'"):
        train(model, [torch.zeros(16, 16, dtype=torch.complex64)], tmp_path / "r", steps=1, progress=False)


def test_deepcache_rejects_class_conditional_unet():
    from monai.networks.nets import DiffusionModelUNet

    from medrecon.accel.deepcache import DeepCacheUNet

    net = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=2, channels=(8, 8),
                             attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
                             num_class_embeds=3)
    with pytest.raises(ValueError, match="num_class_embeds"):
        DeepCacheUNet(net)
