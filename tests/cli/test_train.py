"""`medrecon train` end to end on a tiny tensor file."""
import numpy as np
import torch

from medrecon.cli.main import main
from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.train import latest_checkpoint


def _write(tmp_path, arr, name="imgs.npy"):
    path = tmp_path / name
    np.save(path, arr)
    return path


def test_train_command_writes_checkpoint_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = (rng.standard_normal((4, 16, 16)) + 1j * rng.standard_normal((4, 16, 16))).astype(np.complex64)
    data = _write(tmp_path, imgs)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--batch-size", "2", "--quiet"]
    assert main(args) == 0
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck.step == 2 and ck.model.prediction_type == "eps"
    assert main(args[:8] + ["4"] + args[9:]) == 0
    assert load_checkpoint(latest_checkpoint(out)).step == 4
    assert main(args + ["--no-resume"]) == 2
    assert "resume" in capsys.readouterr().err


def test_train_command_accepts_channels_and_pt(tmp_path):
    x = torch.randn(2, 2, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "v"
    assert main(["train", "--data", str(tmp_path / "x.pt"), "--out", str(out), "--objective", "v",
                 "--steps", "1", "--batch-size", "2", "--quiet"]) == 0
    assert load_checkpoint(latest_checkpoint(out)).model.prediction_type == "v"


def test_train_command_rejects_bad_data(tmp_path, capsys):
    bad = _write(tmp_path, np.zeros((2, 3, 16, 16), dtype=np.float32))
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "--data" in capsys.readouterr().err
    odd = _write(tmp_path, np.zeros((2, 15, 15), dtype=np.complex64), "odd.npy")
    assert main(["train", "--data", str(odd), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")]) == 2


def test_train_command_reads_a_fastmri_directory(tmp_path):
    from medrecon.datasets.demo import make_demo_file

    folder = tmp_path / "h5"
    folder.mkdir()
    make_demo_file(folder / "vol0.h5", n_slices=2, coils=4, size=(32, 32))
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(out), "--steps", "1", "--batch-size", "2",
                 "--quiet"]) == 0
    assert load_checkpoint(latest_checkpoint(out)).step == 1


def test_train_command_init_starts_from_a_checkpoint(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.standard_normal((4, 16, 16)) + 1j * rng.standard_normal((4, 16, 16))
    data = _write(tmp_path, imgs.astype(np.complex64))
    base = ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "2", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--steps", "2"]) == 0
    src = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    assert main(base + ["--out", str(tmp_path / "b"), "--steps", "1", "--lr", "0", "--init", str(src.path)]) == 0
    ck = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert ck.step == 1 and all(torch.equal(v, src.ema[k]) for k, v in ck.model.net.state_dict().items())
    assert main(base + ["--out", str(tmp_path / "c"), "--steps", "1", "--init", str(tmp_path / "missing")]) == 2
