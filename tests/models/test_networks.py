"""Network configs: JSON round trip, presets, validation, and that the built network is MONAI's."""
import json

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from medrecon.models.networks import PRESETS, UNetConfig, build_unet, count_parameters, preset


def test_config_json_round_trip():
    for name, cfg in PRESETS.items():
        again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg, name


def test_tiny_preset_is_small_and_runs():
    net = build_unet("tiny")
    assert isinstance(net, DiffusionModelUNet)
    assert count_parameters(net) < 200_000
    x = torch.randn(2, 2, 16, 16)
    y = net(x, torch.tensor([3.0, 700.5]))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_small_preset_runs_at_demo_size():
    cfg = PRESETS["small"]
    assert 128 % cfg.downsample_factor == 0 and any(cfg.attention_levels)
    net = build_unet(cfg)
    assert count_parameters(net) > count_parameters(build_unet("tiny"))
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32), torch.tensor([10])).shape == (1, 2, 32, 32)


def test_build_matches_monai_arguments():
    cfg = preset("tiny", in_channels=1, out_channels=1)
    torch.manual_seed(0)
    ours = build_unet(cfg)
    torch.manual_seed(0)
    ref = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32),
                             attention_levels=(False, False), num_res_blocks=(1, 1),
                             norm_num_groups=8, num_head_channels=16)
    sd, rd = ours.state_dict(), ref.state_dict()
    assert sd.keys() == rd.keys() and all(torch.equal(sd[k], rd[k]) for k in sd)
    # ours runs attention through torch's SDPA (memory-efficient): the same outputs as MONAI's
    x, t = torch.randn(2, 1, 24, 40, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t), rtol=1e-5, atol=1e-5)
    assert any(getattr(m, "use_flash_attention", False) for m in ours.modules())


@pytest.mark.parametrize("bad,match", [
    (dict(channels=(16, 32), attention_levels=(False,)), "attention_levels"),
    (dict(channels=(12, 32)), "norm_num_groups"),
    (dict(channels=(16, 32), num_res_blocks=(1, 1, 1)), "num_res_blocks"),
    (dict(spatial_dims=4), "spatial_dims"),
])
def test_invalid_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**bad)


def test_unknown_keys_and_presets():
    with pytest.raises(ValueError, match="unknown keys"):
        UNetConfig.from_dict({"channels": [16, 32], "widht": 3})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
