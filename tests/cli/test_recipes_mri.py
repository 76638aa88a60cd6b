"""MRI training recipes (``cli/recipes/mri.py``): each runs a couple of steps on tiny data and leaves
a checkpoint that loads; the normalisation is the zero-filled maximum; train()'s time limit."""
import math

import pytest
import torch

from medrecon.cli.main import build_parser
from medrecon.cli.recipes.mri import RECIPES, WindowDataset, normalize_images
from medrecon.cli.train import _recipe_options
from medrecon.models.checkpoint import load_checkpoint, load_model
from medrecon.models.train import latest_checkpoint
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import make_mask


def _args(*argv):
    args = build_parser().parse_args(["train", *argv])
    args.recipe_options = _recipe_options(args.recipe_option)
    return args


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Smooth random complex images [6, 32, 16] (a readout-oversampled 16-wide field of view)."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(6, 32, 16, dtype=torch.complex64, generator=g)
    yy, xx = torch.meshgrid(torch.arange(32) - 16, torch.arange(16) - 8, indexing="ij")
    x = ifft2c(k * torch.exp(-(yy ** 2 + xx ** 2) / 20.0))
    path = tmp_path_factory.mktemp("data") / "images.pt"
    torch.save(x, path)
    return path


@pytest.mark.parametrize("recipe,pred", [("vp", "eps"), ("ve", "score"), ("hfs", "score")])
def test_recipe_trains_and_checkpoint_loads(recipe, pred, images, tmp_path, capsys):
    out = tmp_path / recipe
    opts = ["--recipe-option", "size=16"] + (["--recipe-option", "acs=4"] if recipe == "hfs" else [])
    args = _args("--recipe", recipe, "--data", str(images), "--out", str(out), "--preset", "tiny",
                 "--steps", "2", "--batch-size", "2", "--quiet", *opts)
    assert RECIPES[recipe].run(args) == 0
    ck = latest_checkpoint(out)
    assert ck is not None and ck.name == "step-00000002"
    model = load_model(ck)
    assert model.prediction_type == pred and model.in_channels == 2
    extra = load_checkpoint(ck).extra
    assert extra["objective"] == {"vp": "eps", "ve": "score", "hfs": "hfs"}[recipe]
    if recipe == "hfs":
        assert extra["hfs"] == {"type": "hfs", "acs": 4, "beta_min": 0.1, "beta_max": 20.0, "region": "lines"}
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    assert torch.isfinite(model.raw(x, torch.tensor([0.5]))).all()
    assert "step 2" in capsys.readouterr().out


@pytest.mark.slow
def test_recipe_simulates_its_data_once(tmp_path):
    """Without --data: 1 volume x 1 slice at 16x16 (k-space 32x16) into <out>/data, reused (slow: the
    anatomy source loads in ~10 s on a busy 2-core machine)."""
    out = tmp_path / "vp"

    def argv(steps):
        return ["--recipe", "vp", "--out", str(out), "--preset", "tiny", "--steps", steps, "--batch-size", "1",
                "--quiet", "--recipe-option", "size=16", "--recipe-option", "volumes=1",
                "--recipe-option", "slices=1"]
    assert RECIPES["vp"].run(_args(*argv("1"))) == 0
    data = out / "data" / "images.pt"
    x = torch.load(data, weights_only=True)
    assert x.shape == (1, 32, 16) and x.is_complex()
    stamp = data.stat().st_mtime_ns
    assert RECIPES["vp"].run(_args(*argv("2"))) == 0  # resumes on the same data
    assert data.stat().st_mtime_ns == stamp and latest_checkpoint(out).name == "step-00000002"


def test_normalisation_is_the_zero_filled_maximum():
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(4, 32, 16, dtype=torch.complex64, generator=g)
    n = normalize_images(x)
    for i in range(4):  # the mask drawn for image i: the 4 fastMRI 4x / 8x masks in turn, seed i
        kind, acc, cf = [("equispaced_fraction", 4, 0.08), ("random", 4, 0.08),
                         ("equispaced_fraction", 8, 0.04), ("random", 8, 0.04)][i]
        m = make_mask(kind, (32, 16), acc, cf, seed=i)
        assert math.isclose(float(ifft2c(fft2c(n[i]) * m).abs().max()), 1.0, rel_tol=1e-5)
        assert torch.allclose(n[i] * float(ifft2c(fft2c(x[i]) * m).abs().max()), x[i], atol=1e-5)
    assert torch.allclose(normalize_images(n), n, atol=1e-6)  # idempotent: --data images.pt reuse
    with pytest.raises(ValueError, match="complex"):
        normalize_images(x.real)


def test_windows_cover_offsets_and_flips():
    x = torch.arange(6 * 64 * 16, dtype=torch.float32).reshape(6, 64, 16).to(torch.complex64)
    ds = WindowDataset(x, 16)
    assert ds.offsets == [0, 8, 24, 40, 48] and len(ds) == 6 * 5 * 2
    assert torch.equal(ds[0], x[0, 0:16]) and torch.equal(ds[6 * 2 + 1], x[1, 24:40])
    assert torch.equal(ds[6 * 5 + 2], x[2, 0:16].flip(-1))
    with pytest.raises(ValueError, match="width"):
        WindowDataset(x, 32)


def test_recipe_option_errors(images, tmp_path):
    base = ["--data", str(images), "--out", str(tmp_path / "o"), "--quiet"]
    with pytest.raises(ValueError, match="data_seed"):
        RECIPES["vp"].run(_args("--recipe", "vp", *base, "--recipe-option", "data_seed=1000"))
    with pytest.raises(ValueError, match="acs"):
        RECIPES["vp"].run(_args("--recipe", "vp", *base, "--recipe-option", "acs=4"))
    with pytest.raises(ValueError, match="objective"):
        RECIPES["ve"].run(_args("--recipe", "ve", *base, "--objective", "eps"))
    with pytest.raises(ValueError, match="integer"):
        RECIPES["hfs"].run(_args("--recipe", "hfs", *base, "--recipe-option", "acs=x"))


def test_train_time_limit_and_hfs_objective(images, tmp_path):
    from medrecon.models.hfs_process import HFSSDE
    from medrecon.models.train import train

    x = torch.load(images, weights_only=True)[:, :16]
    r = train("tiny", x, tmp_path / "h", steps=50, batch_size=2, objective="hfs", hfs=HFSSDE(4),
              time_limit=1e-9, progress=False)
    assert r.step == 1 and len(r.losses) == 1 and r.checkpoint.name == "step-00000001"
    assert load_checkpoint(r.checkpoint).extra["hfs"]["acs"] == 4
    with pytest.raises(ValueError, match="hfs"):
        train("tiny", x, tmp_path / "e", steps=1, objective="eps", hfs=HFSSDE(4), progress=False)
    with pytest.raises(ValueError, match="time_limit"):
        train("tiny", x, tmp_path / "t", steps=1, time_limit=0, progress=False)


def _multiscale_file(path, sizes=(16, 32), n=2):
    """A multiscale.pt like ``prepare_multiscale`` writes: ``n`` random images [2 s, s] per scale."""
    g = torch.Generator().manual_seed(2)
    images = {str(s): torch.randn(n, 2 * s, s, dtype=torch.complex64, generator=g) for s in sizes}
    torch.save({"sizes": list(sizes), "images": images}, path)
    return path


def test_multiscale_windows_enumeration():
    from medrecon.cli.recipes.mri_scales import MultiScaleWindows

    x128 = torch.arange(2 * 256 * 128, dtype=torch.float32).reshape(2, 256, 128).to(torch.complex64)
    x192 = torch.arange(3 * 384 * 192, dtype=torch.float32).reshape(3, 384, 192).to(torch.complex64)
    ds = MultiScaleWindows({128: x128, 192: x192}, 128, cycle=(128, 192, 128))
    # at 128 the single-scale recipe's windows: rows centre +- 32 every 16, the whole width
    assert ds.windows[128] == [(o, 0) for o in WindowDataset(x128, 128).offsets]
    rows = [r for r, _ in ds.windows[192]]
    assert min(rows) == 96 - 32 and max(rows) == 384 - 96 + 32 - 128
    assert {c for _, c in ds.windows[192]} == {0, 16, 32, 48, 64}
    assert len(ds) == 3 * 3 * len(ds.windows[192]) * 2
    assert torch.equal(ds[0], x128[0, 32:160]) and torch.equal(ds[3], x128[1, 32:160])
    assert torch.equal(ds[1], x192[0, 64:192, 0:128])
    r = ds.windows[192][1]
    assert torch.equal(ds[1 + 3 * 3], x192[0, r[0]:r[0] + 128, r[1]:r[1] + 128])  # image 0, window 1
    flipped = 1 + 3 * 3 * len(ds.windows[192])
    assert torch.equal(ds[flipped], x192[0, 64:192, 0:128].flip(-1))
    assert all(ds[j].shape == (128, 128) for j in range(0, len(ds), 97))


def test_multiscale_recipe_trains_on_mixed_scales(tmp_path):
    data = _multiscale_file(tmp_path / "multiscale.pt")
    out = tmp_path / "ms"
    argv = ["--recipe", "vp", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--batch-size", "4", "--quiet", "--recipe-option", "size=16", "--recipe-option", "scales=1"]
    assert RECIPES["vp"].run(_args(*argv)) == 0
    assert latest_checkpoint(out).name == "step-00000002"
    with pytest.raises(ValueError, match="multiscale"):  # a single-scale tensor file is not multi-scale data
        single = tmp_path / "single.pt"
        torch.save(torch.zeros(2, 32, 16, dtype=torch.complex64), single)
        RECIPES["vp"].run(_args(*argv[:2], "--data", str(single), *argv[4:]))
    with pytest.raises(ValueError, match="scales"):
        RECIPES["vp"].run(_args(*argv[:-1], "scales=2"))


def test_recipe_init_fine_tunes_from_a_checkpoint(images, tmp_path):
    """--init copies the checkpoint's (EMA) weights; lr 0 keeps them; a mismatched prior is refused."""
    base = ["--data", str(images), "--preset", "tiny", "--batch-size", "2", "--quiet", "--recipe-option", "size=16"]
    assert RECIPES["vp"].run(_args("--recipe", "vp", "--out", str(tmp_path / "a"), "--steps", "2", *base)) == 0
    src = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    out = tmp_path / "b"
    assert RECIPES["vp"].run(_args("--recipe", "vp", "--out", str(out), "--steps", "1", "--lr", "0",
                                   "--init", str(src.path), *base)) == 0
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck.step == 1 and ck.extra["init"] == str(src.path)
    assert all(torch.equal(v, src.ema[k]) for k, v in ck.model.net.state_dict().items())
    # the EMA starts at those weights too: d * w + (1 - d) * w, equal up to float rounding
    assert all(torch.allclose(v, src.ema[k], rtol=1e-6, atol=1e-9) for k, v in ck.ema.items())
    with pytest.raises(ValueError, match="eps"):  # a VP eps network cannot start an HFS score run
        RECIPES["hfs"].run(_args("--recipe", "hfs", "--out", str(tmp_path / "c"), "--steps", "1",
                                 "--init", str(src.path), *base, "--recipe-option", "acs=4"))
    with pytest.raises(ValueError, match="network"):
        RECIPES["vp"].run(_args("--recipe", "vp", "--out", str(tmp_path / "d"), "--steps", "1",
                                "--init", str(src.path), *base[:2], "--preset", "brain128", *base[4:]))


def test_heldout_loss_is_fixed_and_exact_for_a_zero_network(images, tmp_path):
    """A fresh MONAI UNet outputs 0 (zero-initialised last layer; lr 0 keeps it): the VP loss is then
    E|z|^2 per real component, 1/2, and the HFS loss is below it (only the high frequencies count)."""
    from medrecon.cli.recipes.mri_heldout import heldout_loss

    x = torch.load(images, weights_only=True)[:, :, :16]
    base = ["--data", str(images), "--preset", "tiny", "--batch-size", "2", "--quiet", "--recipe-option", "size=16",
            "--steps", "1", "--lr", "0"]
    assert RECIPES["vp"].run(_args("--recipe", "vp", "--out", str(tmp_path / "vp"), *base)) == 0
    assert RECIPES["hfs"].run(_args("--recipe", "hfs", "--out", str(tmp_path / "hfs"), *base,
                                    "--recipe-option", "acs=4")) == 0
    vp, hfs = latest_checkpoint(tmp_path / "vp"), latest_checkpoint(tmp_path / "hfs")
    loss = heldout_loss(vp, x)
    assert loss == heldout_loss(vp, x) and abs(loss - 0.5) < 0.03  # 6 x 32 x 16 x 2 x 10 samples
    h = heldout_loss(hfs, x)
    assert h == heldout_loss(hfs, x) and 0.2 < h < 0.5 and heldout_loss(hfs, x, seed=1) != h
