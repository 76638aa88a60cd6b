"""Training loop: a tiny U-Net overfits a handful of images, EMA math, exact resumption,
objectives, run-directory safety, and validation samples through a caller-supplied sampler."""
import json

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.networks import build_unet
from medrecon.models.schedules import VE
from medrecon.models.train import train, validation_loss
from medrecon.models.train_common import EMA, latest_checkpoint

from ._data import TensorItems

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
    data = TensorItems(_images(4))
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
    data = TensorItems(_images(6))
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
    data = TensorItems(_images(2))
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
    data = TensorItems(torch.view_as_real(_images(2)).permute(0, 3, 1, 2).contiguous())  # items [2, H, W]
    sched = VE(sigma_min=0.01, sigma_max=20.0) if objective == "score" else None
    r = train("tiny", data, tmp_path / objective, steps=2, batch_size=2, objective=objective,
              schedule=sched, progress=False)
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert load_checkpoint(r.checkpoint).model.prediction_type == objective


def test_sampler_callback_writes_png_and_bad_arguments(tmp_path):
    data = TensorItems(_images(2))
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
        train("tiny", TensorItems(torch.randn(2, 3, H, H)), tmp_path / "x", steps=1, progress=False)


def test_complex_training_noise_is_circular_like_the_solvers():
    """Training noise for complex images is CN(0, I) (E|z|^2 = 1), the solvers' noise_like convention."""
    from medrecon.models.train_common import randn_like, step_generator
    from medrecon.solvers.base import noise_like

    x = torch.zeros(64, H, H, dtype=torch.complex64)
    z = randn_like(x, step_generator(0, 0, 0))
    ref = noise_like(x, torch.Generator().manual_seed(0))
    assert z.dtype == x.dtype
    for v in (z, ref):
        assert abs(v.abs().pow(2).mean().item() - 1.0) < 0.03
        assert abs(v.real.var().item() - 0.5) < 0.02 and abs(v.imag.var().item() - 0.5) < 0.02


def test_grad_clip_progress_bar_and_validation_loss(tmp_path, monkeypatch, capsys):
    data = TensorItems(_images(4))
    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        norms.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train("tiny", data, tmp_path / "c", steps=3, batch_size=2, grad_clip=0.5, val_dataset=data, val_every=2,
          progress=True)
    assert norms == [0.5, 0.5, 0.5]
    err = capsys.readouterr().err
    assert "loss=" in err and "3/3" in err  # tqdm bar with the running loss
    log = [json.loads(l) for l in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert "val_loss" in log[1] and "val_loss" not in log[0] and log[1]["val_loss"] > 0
    norms.clear()
    train("tiny", data, tmp_path / "n", steps=2, batch_size=2, grad_clip=None, progress=False)
    assert norms == []


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_torchrun(tmp_path):
    """torchrun, 2 ranks, gloo on CPU: the run finishes, only rank 0 writes checkpoints and the log,
    and both ranks end with the same weights (DistributedDataParallel averaged the gradients)."""
    import os
    import socket
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "x.npy", _images(4).numpy())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(
        "import os, sys, torch\n"
        "from medrecon.cli.train import load_images\n"
        "from medrecon.models.train import train\n"
        "ds = load_images(sys.argv[1])\n"
        "r = train('tiny', ds, sys.argv[2], steps=3, batch_size=2, seed=1, device='cpu', progress=False)\n"
        "torch.save({k: v.clone() for k, v in r.model.net.state_dict().items()},\n"
        "           os.path.join(sys.argv[3], f\"rank{os.environ['RANK']}.pt\"))\n")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", "--master_addr=127.0.0.1", str(script),
                           str(tmp_path / "x.npy"), str(out), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck.step == 3 and ck.extra["world_size"] == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # rank 0 only
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], ck.model.net.state_dict()[k]) for k in w0)
