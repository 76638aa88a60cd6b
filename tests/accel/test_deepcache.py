"""DeepCache on MONAI's DiffusionModelUNet: exactness of full steps, the reuse schedule, and that
cached steps really skip the deep blocks."""
import pytest
import torch

from medrecon.accel.deepcache import DeepCacheUNet, quadratic_full_steps
from medrecon.models.networks import UNetConfig, build_unet


def _net(channels=(16, 32), nrb=(1, 1), attn=None, seed=0):
    torch.manual_seed(seed)  # weight init only; MONAI zero-initialises the output conv
    cfg = UNetConfig(channels=channels, attention_levels=attn or (False,) * len(channels),
                     num_res_blocks=nrb, norm_num_groups=8)
    net = build_unet(cfg).eval()
    with torch.no_grad():  # give the zero-initialised output conv real weights
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    return net


def _count_calls(module):
    counter = {"n": 0}
    module.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    return counter


def _inputs(b=2, h=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, h, h, generator=g), torch.tensor([500.0] * b)


@pytest.mark.parametrize("channels,nrb", [((16, 32), (1, 1)), ((16, 16, 32), (2, 1, 1))])
def test_interval_one_equals_plain_network(channels, nrb):
    net = _net(channels, nrb)
    fast = DeepCacheUNet(net, interval=1)
    for k in range(3):
        x, _ = _inputs(seed=k)
        t = torch.tensor([900.0 - 300 * k] * 2)
        with torch.no_grad():
            assert torch.equal(fast(x, t), net(x, t))
    assert fast.full_calls == 3 and fast.cached_calls == 0


@pytest.mark.parametrize("branch", [0, 1])
def test_cached_step_on_same_input_is_exact(branch):
    # with the same (x, t) as the full step, the cache holds exactly what the deep path would give
    net = _net((16, 16, 32), (2, 1, 1))
    fast = DeepCacheUNet(net, interval=2, branch=branch)
    x, t = _inputs(h=16)
    with torch.no_grad():
        ref = net(x, t)
        assert torch.equal(fast(x, t), ref)
        assert torch.allclose(fast(x, t), ref, rtol=0, atol=1e-6)
    assert fast.full_calls == 1 and fast.cached_calls == 1


def test_deep_blocks_run_only_on_full_steps():
    net = _net((16, 16, 32), (1, 1, 1))
    mid = _count_calls(net.middle_block)
    deep_up = _count_calls(net.up_blocks[0])
    shallow_up = _count_calls(net.up_blocks[-1])
    fast = DeepCacheUNet(net, interval=3)
    x, t = _inputs()
    with torch.no_grad():
        for k in range(7):
            y = fast(x + 0.1 * k, t - 50 * k)
            assert y.shape == x.shape
    assert [fast.is_full(k) for k in range(7)] == [True, False, False, True, False, False, True]
    assert mid["n"] == deep_up["n"] == 3
    assert shallow_up["n"] == 7
    assert (fast.full_calls, fast.cached_calls) == (3, 4)
    fast.reset()
    assert fast.calls == 0 and fast._cache is None


def test_cached_output_differs_from_stale_full_and_tracks_plain():
    # cached steps use fresh shallow features: closer to the plain net than re-using the old output
    net = _net()
    fast = DeepCacheUNet(net, interval=2)
    x, t = _inputs()
    with torch.no_grad():
        y0 = fast(x, t)
        x1, t1 = x + 0.05 * torch.randn_like(x), t - 20
        y1 = fast(x1, t1)
        ref1 = net(x1, t1)
    assert not torch.equal(y1, y0)
    assert (y1 - ref1).norm() < (y0 - ref1).norm()


def test_nonuniform_schedule_and_errors():
    net = _net()
    fs = quadratic_full_steps(20, 5)
    assert fs[0] == 0 and fs == sorted(fs) and len(fs) == 5
    gaps = [b - a for a, b in zip(fs, fs[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0] and fs[-1] < 20  # denser at the start
    fast = DeepCacheUNet(net, full_steps=fs)
    mid = _count_calls(net.middle_block)
    x, t = _inputs()
    with torch.no_grad():
        for _ in range(20):
            fast(x, t)
    assert mid["n"] == len(fs)
    with pytest.raises(ValueError, match="full_steps"):
        DeepCacheUNet(net, full_steps=[1, 2])
    with pytest.raises(ValueError, match="branch"):
        DeepCacheUNet(net, branch=5)
    with pytest.raises(ValueError, match="interval"):
        DeepCacheUNet(net, interval=0)
    with pytest.raises(ValueError, match="unet"):
        DeepCacheUNet(torch.nn.Linear(2, 2))
