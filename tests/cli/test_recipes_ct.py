"""`medrecon train --recipe ct-autoencoder|ct-latent-cold|ct-pixel-ddpm` (cli/recipes/ct.py)."""
import json

import pytest
import torch

from medrecon.cli.main import build_parser
from medrecon.cli.recipes.ct import RECIPES
from medrecon.cli.train import _recipe_options

SMALL = ["--recipe-option", "size=16", "--recipe-option", "n_train=4", "--batch-size", "2", "--quiet"]


def _train(*argv):
    args = build_parser().parse_args(["train", *map(str, argv)])
    args.recipe_options = _recipe_options(args.recipe_option)
    return RECIPES[args.recipe].run(args)


def _cfg(d):
    return json.loads((d / "config.json").read_text())


def test_pixel_recipe_checkpoint_resume_and_overwrite(tmp_path, capsys):
    from medrecon.ct.pixel_ddpm import load_pixel_ddpm

    out = tmp_path / "pix"
    cache = tmp_path / "data.pt"
    base = ["--recipe", "ct-pixel-ddpm", "--out", out, "--preset", "tiny", *SMALL,
            "--recipe-option", f"cache={cache}"]
    assert _train(*base, "--steps", "2") == 0
    assert (out / "model.safetensors").is_file() and (out / "ema.safetensors").is_file()
    cfg = _cfg(out)
    ex = cfg["extra"]
    assert cfg["step"] == 2 and ex["recipe"] == "ct-pixel-ddpm" and ex["steps"] == 2
    assert ex["data"]["seed"] == 0 and ex["data"]["size"] == 16 and ex["train_seconds"] > 0
    assert cache.is_file()
    m = load_pixel_ddpm(out)
    assert m.network_config.in_channels == 2
    w2 = {k: v.clone() for k, v in m.net.state_dict().items()}
    # continue to 3 steps from the saved weights: step count and time accumulate, weights move
    assert _train(*base, "--steps", "3") == 0
    ex3 = _cfg(out)["extra"]
    assert _cfg(out)["step"] == 3 and ex3["train_seconds"] > ex["train_seconds"]
    w3 = load_pixel_ddpm(out, use_ema=False).net.state_dict()
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)
    # nothing left to do
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert _train(*base, "--steps", "3") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    # --no-resume refuses without --overwrite, retrains from scratch with it
    with pytest.raises(FileExistsError, match="--overwrite"):
        _train(*base, "--steps", "2", "--no-resume")
    assert _train(*base, "--steps", "2", "--no-resume", "--overwrite") == 0
    assert _cfg(out)["step"] == 2
    # resuming with other data is refused
    with pytest.raises(ValueError, match="i0"):
        _train("--recipe", "ct-pixel-ddpm", "--out", out, "--preset", "tiny", *SMALL, "--steps", "4",
               "--recipe-option", "i0=2000")


def test_latent_cold_recipe_trains_autoencoder_then_latent(tmp_path):
    from medrecon.ct.autoencoder import load_autoencoder
    from medrecon.ct.cold_diffusion import load_cold_diffusion

    out = tmp_path / "cold"
    assert _train("--recipe", "ct-latent-cold", "--out", out, "--preset", "tiny", *SMALL, "--steps", "2",
                  "--recipe-option", "ae_steps=1", "--recipe-option", "ae_preset=tiny",
                  "--recipe-option", "T=4") == 0
    ae = load_autoencoder(out / "autoencoder")
    cold = load_cold_diffusion(out / "latent")
    assert cold.T == 4 and cold.network_config.in_channels == ae.latent_channels
    ex = json.loads((out / "latent" / "config.json").read_text())["extra"]
    assert ex["recipe"] == "ct-latent-cold" and ex["autoencoder"]["steps"] == 1
    assert ex["autoencoder"]["train_seconds"] > 0 and ex["train_seconds"] > 0
    # a separate autoencoder run is copied in with autoencoder=DIR
    ae_dir = tmp_path / "ae"
    assert _train("--recipe", "ct-autoencoder", "--out", ae_dir, "--preset", "tiny", *SMALL, "--steps", "1") == 0
    out2 = tmp_path / "cold2"
    assert _train("--recipe", "ct-latent-cold", "--out", out2, "--preset", "tiny", *SMALL, "--steps", "1",
                  "--recipe-option", f"autoencoder={ae_dir}", "--recipe-option", "T=4") == 0
    assert (out2 / "autoencoder" / "config.json").read_bytes() == (ae_dir / "config.json").read_bytes()


def test_recipe_option_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown for recipe"):
        _train("--recipe", "ct-pixel-ddpm", "--out", tmp_path / "a", "--recipe-option", "T=3")
    with pytest.raises(ValueError, match="multiple of 8"):
        _train("--recipe", "ct-pixel-ddpm", "--out", tmp_path / "a", "--recipe-option", "size=20")
    with pytest.raises(ValueError, match="held-out"):
        _train("--recipe", "ct-pixel-ddpm", "--out", tmp_path / "a", "--recipe-option", "n_train=5000",
               "--recipe-option", "slices_per_volume=1")
    with pytest.raises(ValueError, match="expected a number"):
        _train("--recipe", "ct-autoencoder", "--out", tmp_path / "a", "--recipe-option", "i0=lots")
    with pytest.raises(ValueError, match="ae_texture"):
        _train("--recipe", "ct-autoencoder", "--out", tmp_path / "a", "--recipe-option", "ae_texture=2")
    with pytest.raises(ValueError, match="ae_augment"):
        _train("--recipe", "ct-autoencoder", "--out", tmp_path / "a", "--recipe-option", "ae_augment=3")
    assert not (tmp_path / "a").exists()  # refused before anything was simulated or written


def test_autoencoder_recipe_texture_augment_cosine_recorded_and_resumed(tmp_path):
    """The autoencoder options reach the trainer and its record; a longer --steps continues."""
    out = tmp_path / "ae"
    opts = ["--recipe-option", "ae_texture=0.5", "--recipe-option", "ae_augment=1", "--recipe-option", "ae_crop=8",
            "--recipe-option", "ae_lr_min=1e-5"]
    assert _train("--recipe", "ct-autoencoder", "--out", out, "--preset", "tiny", *SMALL, "--steps", "2", *opts) == 0
    ex = _cfg(out)["extra"]
    assert ex["texture_fraction"] == 0.5 and ex["augment"] is True and ex["lr_min"] == 1e-5 and ex["crop"] == 8
    assert _train("--recipe", "ct-autoencoder", "--out", out, "--preset", "tiny", *SMALL, "--steps", "3", *opts) == 0
    assert _cfg(out)["extra"]["steps"] == 3


def test_texture_pairs_join_the_training_set_and_the_record(tmp_path):
    from medrecon.cli.recipes import ct as R

    opts = R._options(type("A", (), {"recipe_options": {"size": "16", "n_train": "4",
                                                          "texture_pairs": "3"}})(), "ct-pixel-ddpm")
    ds = R._simulate(opts)
    assert len(ds) == 7
    rec = R.recipe_data(opts)
    assert rec["texture_pairs"] == 3 and "texture_pairs" not in R.recipe_data({**opts, "texture_pairs": 0})
    with pytest.raises(ValueError, match="texture_pairs"):
        _train("--recipe", "ct-pixel-ddpm", "--out", tmp_path / "a", "--recipe-option", "texture_pairs=-1")


def test_warmup_ema_decay_and_continuation():
    from medrecon.ct.fit import WarmupEMA

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WarmupEMA(net, 0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay min(0.999, 1/10) = 0.1
    assert float(ema.shadow["weight"]) == pytest.approx(0.9)
    ema.update(net)  # decay 2/11
    assert float(ema.shadow["weight"]) == pytest.approx(1 - 0.1 * 2 / 11)
    # continuing at update 10000 from a saved state uses the full decay
    cont = WarmupEMA(net, 0.999, start=10_000, state={"weight": torch.zeros(1, 1)})
    cont.update(net)
    assert float(cont.shadow["weight"]) == pytest.approx(0.001)
