"""Checkpoints: bit-exact round trip (weights, EMA, optimizer, shifts), no pickle, atomic writes,
and clear errors for mismatched files."""
import json

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from medrecon.models.networks import build_unet, preset
from medrecon.models.schedules import VE, VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel


def _model(ptype="eps", seed=0, ve=False):
    torch.manual_seed(seed)  # weight init only
    cfg = preset("tiny")
    sched = VE(sigma_min=0.01, sigma_max=50.0) if ve else VPSchedule(make_betas("linear", 1000))
    return DiffusionModel(build_unet(cfg), sched, ptype, network_config=cfg), cfg


def _trained_optimizer(model):
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    x = torch.randn(2, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        model.raw(x, torch.tensor([3, 500])).abs().pow(2).mean().backward()
        opt.step()
    return opt


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_bit_exact(tmp_path):
    model, cfg = _model("v")
    opt = _trained_optimizer(model)
    ema = {k: v * 0.5 for k, v in model.net.state_dict().items()}
    shifts = {"solver": "ddim", "timesteps": [900, 0], "shifts": [3.5, 0.25]}
    path = save_checkpoint(tmp_path / "ck", model, {"network": cfg, "note": "hi"}, ema=ema, step=7,
                           optimizer=opt, timestep_shifts=shifts, rng={"g": torch.Generator().get_state()})
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.model.prediction_type == "v" and ck.network_config == cfg
    assert ck.extra == {"note": "hi"} and ck.timestep_shifts == shifts
    assert _same(ck.model.net.state_dict(), model.net.state_dict())
    assert _same(ck.ema, ema)
    torch.testing.assert_close(torch.as_tensor(ck.model.schedule.alphas_cumprod),
                               torch.as_tensor(model.schedule.alphas_cumprod), rtol=0, atol=0)
    # the optimizer state reloads into a fresh optimizer and matches exactly
    opt2 = torch.optim.AdamW(ck.model.net.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        assert _same(s1["state"][pid], s2["state"][pid])
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
    assert torch.equal(ck.rng["g"], torch.Generator().get_state())
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    assert torch.equal(load_model(path, use_ema=False).eps(x, 10), model.eps(x, 10))
    # no pickles anywhere in the checkpoint
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors"]


def test_ve_round_trip(tmp_path):
    model, cfg = _model("score", ve=True)
    ck = load_checkpoint(save_checkpoint(tmp_path / "ve", model, cfg))
    t = torch.tensor([0.3])
    assert float(ck.model.schedule.sigma(t)) == pytest.approx(float(model.schedule.sigma(t)))
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    assert torch.equal(ck.model.score(x, t), model.score(x, t))


def test_never_overwrites_unless_asked_and_writes_atomically(tmp_path):
    model, cfg = _model()
    path = save_checkpoint(tmp_path / "ck", model, cfg, step=1)
    with pytest.raises(FileExistsError, match="ck"):
        save_checkpoint(tmp_path / "ck", model, cfg, step=2)
    assert load_checkpoint(path).step == 1
    save_checkpoint(tmp_path / "ck", model, cfg, step=3, overwrite=True)
    assert load_checkpoint(path).step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary leftovers


def _corrupt(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_mismatch_errors_name_the_file(tmp_path):
    model, cfg = _model("eps")
    path = save_checkpoint(tmp_path / "ck", model, cfg)
    with pytest.raises(ValueError, match=r"config\.json.*'eps'.*'v'"):
        load_checkpoint(path, prediction_type="v")
    # wrong shapes: the config claims a wider network than the weights
    p2 = save_checkpoint(tmp_path / "shape", model, cfg)
    _corrupt(p2, lambda c: c["network"]["config"].update(channels=[16, 64]))
    with pytest.raises(ValueError, match=r"model\.safetensors.*shape"):
        load_checkpoint(p2)
    # missing keys: an extra level
    p3 = save_checkpoint(tmp_path / "keys", model, cfg)
    _corrupt(p3, lambda c: c["network"]["config"].update(channels=[16, 32, 32], attention_levels=[False] * 3,
                                                         num_res_blocks=[1, 1, 1]))
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing"):
        load_checkpoint(p3)
    p4 = save_checkpoint(tmp_path / "ver", model, cfg)
    _corrupt(p4, lambda c: c.update(version=99))
    with pytest.raises(ValueError, match=r"config\.json.*version 99"):
        load_checkpoint(p4)
    p5 = save_checkpoint(tmp_path / "gone", model, cfg)
    (p5 / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_checkpoint(p5)
    (p5 / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_checkpoint(p5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "nothing")


def test_checkpoint_folder_gets_umask_permissions(tmp_path):
    """mkdtemp's 0700 must not leak into the finished checkpoint (others could not read a shared prior)."""
    import os
    import stat

    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    old = os.umask(0o022)
    try:
        cfg = preset("tiny")
        path = save_checkpoint(tmp_path / "ck", DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas()),
                                                              "eps", network_config=cfg), cfg)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    for f in path.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f
