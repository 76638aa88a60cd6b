"""The shipped CT priors (``ct128-pixel-ddpm``, ``ct128-latent-cold``): safetensors + JSON only, one set
of weights each, the CT methods' defaults; on real CT slices (pydicom's ``CT_small.dcm``, 128x128, and
``693_J2KI.dcm``, 512x512, not from the simulator) with a simulated low-dose scan both beat FBP in HU
RMSE inside the body (docs/priors.md: 40 / 66 HU against FBP's 79 on CT_small, 43 / 60 against 120
on 693_J2KI)."""
import json
import shutil

import pytest
from pydicom.data import get_testdata_file

from medrecon.builtin_priors import describe, prior_path
from medrecon.ct.export import export_ct
from medrecon.cli.main import main


@pytest.mark.parametrize("name,files", [
    ("ct128-pixel-ddpm", ["config.json", "model.safetensors"]),
    ("ct128-latent-cold", ["autoencoder/config.json", "autoencoder/model.safetensors", "latent/config.json",
                           "latent/model.safetensors"]),
])
def test_shipped_ct_files(name, files):
    path = prior_path(name)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == files
    for cfg in path.rglob("config.json"):
        c = json.loads(cfg.read_text())
        assert list(c["files"]) == ["model"]  # no EMA copy, no optimizer state
        assert c["extra"]["data"]["size"] == 128
    d = describe(name)
    assert d["parameters"] > 10_000 and d["size_bytes"] < 8 * 2 ** 20 and d["training_steps"] > 0


def test_the_ct_methods_default_to_them():
    from medrecon.registry import get_method

    assert get_method("pixel-ddpm").prior == "ct128-pixel-ddpm"
    assert get_method("latent-cold-diffusion").prior == "ct128-latent-cold"
    assert get_method("pixel-ddpm").options().checkpoint == ""


def test_export_ct_refuses_to_overwrite_and_round_trips(tmp_path):
    out = export_ct(prior_path("ct128-latent-cold"), tmp_path / "lat", "latent-cold-diffusion")
    assert (out / "latent" / "model.safetensors").read_bytes() == \
        (prior_path("ct128-latent-cold") / "latent" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        export_ct(prior_path("ct128-latent-cold"), out, "latent-cold-diffusion")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def _rmse(capsys, series, method, out):
    capsys.readouterr()
    assert main(["recon", str(series), "--method", method, "--json", "--quiet", "--out", str(out)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]["rmse_hu"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KI.dcm"])
def test_both_priors_beat_fbp_on_real_ct_slices(name, tmp_path, capsys):
    """Real slices (128x128 zoomed vertebra; 512x512 JPEG 2000, four times the training size), low
    dose simulated at the defaults (I0 1e4, sigma_e 5, `medrecon.ct.inputs`)."""
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file(name), series)
    fbp = _rmse(capsys, series, "fbp", tmp_path / "fbp")
    pixel = _rmse(capsys, series, "pixel-ddpm", tmp_path / "pixel")
    latent = _rmse(capsys, series, "latent-cold-diffusion", tmp_path / "latent")
    assert pixel < 0.75 * fbp and latent < 0.9 * fbp, (fbp, pixel, latent)


def test_latent_cold_diffusion_runs_on_the_shipped_prior():
    import torch

    from medrecon.ct.data import simulate_pairs
    from medrecon.ct.recon import CTNetworks
    from medrecon.methods.ct import LatentColdOptions

    p = simulate_pairs(2, 128, seed=1, slices_per_volume=1)  # seeds >= 1000: never trained on
    opts = LatentColdOptions()
    nets = CTNetworks("latent-cold-diffusion", opts, torch.device("cpu"))
    assert nets.size == 128 and nets.ae.config.downsample_factor == 2
    with torch.no_grad():
        out, nfe = nets(p["ldct"], opts, 0)
    assert nfe == 10 and out.shape == p["ldct"].shape and torch.isfinite(out).all()
