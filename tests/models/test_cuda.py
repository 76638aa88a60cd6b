"""CUDA-only checks (skipped without a GPU): mixed-precision training (bf16, fp16 with a gradient
scaler), resume on the GPU, sampling with the model and the inputs on the GPU (device follows the
inputs), and DeepCache on the GPU."""
import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.schedules import make_betas
from medrecon.models.train import train
from medrecon.models.train_common import latest_checkpoint
from medrecon.sample import sample

from ._data import TensorItems

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

H = 16


def _images(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, H, H, dtype=torch.complex64, generator=g) * 0.3


@pytest.mark.parametrize("mp", ["no", "bf16", "fp16"])
def test_mixed_precision_training_and_resume_on_cuda(tmp_path, mp):
    data = TensorItems(_images())
    kw = dict(batch_size=4, lr=1e-3, seed=0, mixed_precision=mp, device="cuda", progress=False)
    r = train("tiny", data, tmp_path / mp, steps=4, **kw)
    assert len(r.losses) == 4 and all(torch.isfinite(torch.tensor(r.losses)))
    assert next(r.model.net.parameters()).device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in r.model.net.parameters())  # AMP keeps fp32 master weights
    r2 = train("tiny", data, tmp_path / mp, steps=6, **kw)
    assert r2.step == 6 and len(r2.losses) == 2
    ck = load_checkpoint(latest_checkpoint(tmp_path / mp))
    assert ck.step == 6 and all(v.device.type == "cpu" for v in ck.model.net.state_dict().values())


def test_sampling_on_cuda_matches_cpu(tmp_path):
    r = train("tiny", TensorItems(_images()), tmp_path / "s", steps=3, batch_size=4, device="cuda", progress=False)
    model = r.model.eval()
    betas = make_betas("linear", 1000)
    x = torch.randn(2, H, H, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for solver in ("ddim", "pndm", "dpm-solver++", "unipc", "euler", "heun"):
            model.net.to("cuda")
            out_gpu = sample(model.eps_fn, x.cuda(), solver, 8, betas)
            assert out_gpu.device.type == "cuda" and out_gpu.dtype == torch.complex64
            model.net.to("cpu")
            out_cpu = sample(model.eps_fn, x, solver, 8, betas)
            assert ((out_gpu.cpu() - out_cpu).norm() / out_cpu.norm()).item() < 1e-3, solver
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_deepcache_on_cuda():
    from medrecon.accel.deepcache import DeepCacheUNet
    from medrecon.models.networks import build_unet

    net = build_unet("tiny", seed=0).cuda().eval()
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.05)
        x, t = torch.randn(2, 2, H, H, device="cuda"), torch.full((2,), 500.0, device="cuda")
        assert torch.equal(DeepCacheUNet(net, interval=1)(x, t), net(x, t))
        fast = DeepCacheUNet(net, interval=3)
        outs = [fast(x, t) for _ in range(4)]
    assert (fast.full_calls, fast.cached_calls) == (2, 2) and outs[-1].device.type == "cuda"
