"""Training loop: a tiny U-Net overfits a handful of images, EMA math, exact resumption,
objectives, run-directory safety, and validation samples through a caller-supplied sampler."""
import json

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.networks import build_unet
from medrecon.models.schedules import VE
from medrecon.models.train import EMA, latest_checkpoint, train, validation_loss

H = 16


def _images(n=4, seed=0):
    """Structured complex images: smooth blobs with a phase ramp."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, H), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(2, generator=g) - 0.5
        r = 0.3 + 0.3 * torch.rand(1, generator=g)
        mag = torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / r**2)
        out.append((mag * torch.exp(1j * 2.0 * xx * c[0])).to(torch.complex64))
    return torch.stack(out)


class _DS(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_ema_update_math():
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin, 0.9)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        lin.weight.add_(1.0)
        lin.bias.mul_(-2.0)
    ema.update(lin)
    for k, v in lin.state_dict().items():
        torch.testing.assert_close(ema.shadow[k], 0.9 * before[k] + 0.1 * v, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(lin, 1.0)


def test_tiny_model_overfits_few_images(tmp_path):
    data = _DS(_images(4))
    before = train("tiny", data, tmp_path / "r0", steps=1, lr=0.0, batch_size=4, seed=3, progress=False)
    dev = torch.device("cpu")
    loss0 = validation_loss(before.model, data, "eps", seed=11, batch_size=4, device=dev)
    res = train("tiny", data, tmp_path / "r1", steps=80, batch_size=4, lr=3e-3, seed=3,
                ema_decay=0.9, progress=False)
    loss1 = validation_loss(res.model, data, "eps", seed=11, batch_size=4, device=dev)
    assert loss1 < 0.6 * loss0, (loss0, loss1)
    assert sum(res.losses[-10:]) < sum(res.losses[:10])
    log = [json.loads(l) for l in (tmp_path / "r1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 81))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = _DS(_images(6))
    kw = dict(batch_size=3, lr=1e-3, seed=5, ema_decay=0.8, progress=False)
    full = train("tiny", data, tmp_path / "full", steps=6, **kw)
    part = train("tiny", data, tmp_path / "part", steps=3, **kw)
    assert part.step == 3 and latest_checkpoint(tmp_path / "part").name == "step-00000003"
    rest = train("tiny", data, tmp_path / "part", steps=6, **kw)
    assert rest.step == 6 and len(rest.losses) == 3
    assert rest.losses == full.losses[3:]
    a, b = full.model.net.state_dict(), rest.model.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.ema.shadow[k], rest.ema.shadow[k]) for k in a)
    ck = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert ck.step == 6 and ck.extra["objective"] == "eps"
    # a finished run resumed again does nothing
    assert train("tiny", data, tmp_path / "part", steps=6, **kw).losses == []


def test_refuses_foreign_run_without_resume(tmp_path):
    data = _DS(_images(2))
    train("tiny", data, tmp_path / "r", steps=1, batch_size=2, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train("tiny", data, tmp_path / "r", steps=1, batch_size=2, resume=False, progress=False)
    with pytest.raises(ValueError, match="prediction|predicts"):
        train("tiny", data, tmp_path / "r", steps=2, batch_size=2, objective="v", progress=False)
    r = train("tiny", data, tmp_path / "r", steps=1, batch_size=2, resume=False, overwrite=True,
              objective="v", progress=False)
    assert load_checkpoint(r.checkpoint).model.prediction_type == "v"


@pytest.mark.parametrize("objective", ["v", "score"])
def test_other_objectives_run_and_checkpoint(tmp_path, objective):
    data = _DS(torch.view_as_real(_images(2)).permute(0, 3, 1, 2).contiguous())  # items [2, H, W]
    sched = VE(sigma_min=0.01, sigma_max=20.0) if objective == "score" else None
    r = train("tiny", data, tmp_path / objective, steps=2, batch_size=2, objective=objective,
              schedule=sched, progress=False)
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert load_checkpoint(r.checkpoint).model.prediction_type == objective


def test_sampler_callback_writes_png_and_bad_arguments(tmp_path):
    data = _DS(_images(2))
    calls = []

    def sampler(eps_fn, x_T):  # one crude DDIM-like step: enough to exercise the hook
        calls.append(x_T.shape)
        return x_T - eps_fn(x_T, 999)

    train("tiny", data, tmp_path / "s", steps=2, batch_size=2, sampler=sampler, sample_every=2,
          num_samples=3, progress=False)
    assert calls == [(3, H, H)] and (tmp_path / "s" / "samples-00000002.png").stat().st_size > 0
    with pytest.raises(ValueError, match="mixed_precision"):
        train("tiny", data, tmp_path / "x", steps=1, mixed_precision="bf16", device="cpu", progress=False)
    with pytest.raises(ValueError, match="objective"):
        train("tiny", data, tmp_path / "x", steps=1, objective="x0", progress=False)
    with pytest.raises(ValueError, match="dataset"):
        train("tiny", _DS(torch.randn(2, 3, H, H)), tmp_path / "x", steps=1, progress=False)
