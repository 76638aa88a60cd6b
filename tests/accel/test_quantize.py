"""Static int8 quantization of the U-Net (per timestep range, Q-Diffusion calibration), the
``quantize`` / ``precision`` options, and a tiny DDNM run through int8 end to end."""
import warnings

import pytest
import torch

from medrecon.accel.precision import AutocastNet, check_precision
from medrecon.accel.quantize import (QuantizedNet, check_quantize, quantize_unet, record_inputs,
                                     uniform_over_time)
from medrecon.models.networks import UNetConfig, build_unet

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")


def _net(seed=0):
    torch.manual_seed(seed)
    cfg = UNetConfig(channels=(16, 32), attention_levels=(False, True), num_res_blocks=(1, 1), norm_num_groups=8)
    net = build_unet(cfg).eval()
    with torch.no_grad():  # MONAI zero-initialises the output conv
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    return net, cfg


def _samples(n, seed, size=16):
    """Inputs like a VP trajectory: x_t = sqrt(abar) x0 + sqrt(1 - abar) noise, t uniform over [0, 1000)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in torch.linspace(0, 999, n):
        abar = torch.exp(-10 * t / 1000)
        x0 = torch.rand(1, 2, size, size, generator=g) - 0.5
        out.append((abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(1, 2, size, size, generator=g), t.reshape(1)))
    return out


def test_int8_eps_close_to_float():
    net, _ = _net()
    q = quantize_unet(net, _samples(24, 0))
    err = []
    with torch.no_grad():
        for x, t in _samples(8, 1):  # held-out inputs of the same distribution
            ref = net(x, t)
            err.append(float((q(x, t) - ref).norm() / ref.norm()))
    assert max(err) < 0.05  # measured 0.01-0.03 (8-bit activations, per-channel 8-bit weights)
    assert all(e > 0 for e in err)  # really the int8 kernels, not the float layers


def test_calibration_uses_several_timestep_ranges():
    net, _ = _net()
    q = QuantizedNet(net, ranges=4).calibrate(_samples(16, 0))
    assert q.calibrated_ranges() == 4 and q.bounds.shape == (3,) and bool((q.bounds.diff() > 0).all())
    first = q.layers[0]  # conv_in: its input scale follows the noise level of each range
    scales = [first.qp[r][0][0] for r in range(4)]
    assert len(set(scales)) == 4
    x = torch.cat([s[0] for s in _samples(4, 2)])
    t = torch.tensor([10.0, 300.0, 600.0, 950.0])  # one call spanning the four ranges
    with torch.no_grad():
        together = q(x, t)
        apart = torch.cat([q(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, apart, atol=1e-6)


def test_nearest_range_when_a_range_saw_no_call():
    net, _ = _net()
    q = QuantizedNet(net, ranges=2)
    samples = _samples(6, 0)
    q.calibrate(samples)
    q.layers[0].lo[1] = float("inf")  # as if range 1 had no calibration call
    q.layers[0].convert()
    assert q.layers[0].qp[1] == q.layers[0].qp[0]


def test_record_inputs_and_uniform_subset():
    net, _ = _net()
    rec = []
    with record_inputs(net, rec), torch.no_grad():
        for x, t in _samples(10, 0):
            net(x, t)
    assert len(rec) == 10 and float(rec[0][1]) == 0.0
    sub = uniform_over_time(rec, 5)
    assert [float(t) for _, t in sub] == [float(rec[i][1]) for i in (0, 2, 4, 6, 8)]


def test_gradient_flows_through_int8():
    net, _ = _net()
    q = quantize_unet(net, _samples(8, 0))
    x, t = _samples(1, 3)[0]
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    net(xs[0], t).square().sum().backward()
    q(xs[1], t).square().sum().backward()
    g0, g1 = xs[0].grad, xs[1].grad
    assert float((g1 - g0).norm() / g0.norm()) < 0.1


def test_option_validation():
    check_quantize("off", "cpu", "ddnm")
    check_quantize("int8", "cpu", "ddnm")
    with pytest.raises(ValueError, match="quantize: expected one of"):
        check_quantize("int4", "cpu", "ddnm")
    with pytest.raises(ValueError, match="CPU only"):
        check_quantize("int8", "cuda", "ddnm")
    assert check_precision("fp32", "cpu", "dds") is None
    assert check_precision("bf16", "cpu", "dds") is torch.bfloat16
    with pytest.raises(ValueError, match="precision: expected one of"):
        check_precision("fp8", "cpu", "dds")
    with pytest.raises(ValueError, match="fp16 autocast is for GPUs"):
        check_precision("fp16", "cpu", "dds")
    with pytest.raises(ValueError, match="range"):
        QuantizedNet(_net()[0], ranges=0)


def test_bf16_autocast_on_cpu():
    net, _ = _net()
    x, t = _samples(1, 4)[0]
    with torch.no_grad():
        ref, out = net(x, t), AutocastNet(net, torch.bfloat16)(x, t)
    assert out.dtype == torch.float32
    assert float((out - ref).norm() / ref.norm()) < 0.05  # bf16: 8-bit mantissa


def _tiny_problem(size=32, coils=2, seed=0):
    from medrecon.physics.fft import fft2c
    from medrecon.physics.masks import make_mask

    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(size, size, dtype=torch.complex64)
    img[8:24, 10:22] = 1.0
    maps = torch.randn(coils, size, size, dtype=torch.complex64, generator=g) * 0.1 + 1
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    k = fft2c(maps * img)
    return k, make_mask("equispaced_fraction", (size, size), 4, 0.125, seed=0), maps


def test_tiny_ddnm_int8_end_to_end(tmp_path, monkeypatch):
    from medrecon.methods import priors
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel
    from medrecon.reconstruct import reconstruct

    net, cfg = _net()
    ck = str(save_checkpoint(tmp_path / "ck", DiffusionModel(net, VPSchedule(make_betas("linear", 1000)), "eps"), cfg))
    monkeypatch.setitem(priors.CALIBRATION, "size", 16)
    monkeypatch.setitem(priors.CALIBRATION, "coils", 2)
    monkeypatch.setitem(priors.CALIBRATION, "steps", 4)
    cache = priors.PriorCache()
    monkeypatch.setattr(priors, "DEFAULT_PRIORS", cache)
    k, mask, maps = _tiny_problem()
    kw = dict(checkpoint=ck, steps=4, smaps=maps, seed=0, cg_iters=3)
    ref = reconstruct(k, mask, "ddnm", **kw).image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = reconstruct(k, mask, "ddnm", quantize="int8", **kw).image
        again = reconstruct(k, mask, "ddnm", quantize="int8", **kw).image
    assert sum(key[0] == "int8" for key in cache.keys()) == 1  # calibrated once, then reused
    assert torch.equal(out, again)  # the calibration does not depend on the input: reproducible
    assert not torch.equal(out, ref)
    assert float((out - ref).norm() / ref.norm()) < 0.05
