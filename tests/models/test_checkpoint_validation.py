"""Checkpoints are validated before anything is built (issue 15 item 5): schema, arithmetic size cap,
files confined to the folder, safetensors headers equal to the network (names, shapes, dtypes).
Hostile configs fail in milliseconds with one line naming the file and key, through the API and CLI."""
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from medrecon.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from medrecon.models.config_schema import CheckpointConfigError, validate_checkpoint
from medrecon.models.network_size import (autoencoder_size, discriminator_size, generator_size, unet_size)
from medrecon.models.networks import UNetConfig, build_unet, preset
from medrecon.models.schedules import VE, VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 100)), "eps", network_config=cfg)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "ck", model, cfg)


def _variant(base, tmp_path, edit):
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg, d)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _net(**kw):
    return lambda c, d: c["network"]["config"].update(**kw)


def _n(module):
    return sum(v.numel() for v in module.state_dict().values())


def test_size_arithmetic_equals_the_built_networks():
    """The parameter counts by arithmetic equal MONAI's / medrecon's built networks (``meta``
    device), for random U-Nets (2-D and 3-D, attention, resblock up/down), autoencoders and DDGANs."""
    from medrecon.ct.autoencoder import AEConfig, CTAutoencoder
    from medrecon.models.ddgan import DDGANConfig, Discriminator, Generator

    rng = random.Random(0)
    for _ in range(4):
        g = rng.choice([4, 8])
        ch = [g * rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
        heads = [h for h in (4, 8, 16) if all(c % h == 0 for c in ch)] or [g]
        cfg = UNetConfig(channels=tuple(ch), attention_levels=tuple(rng.random() < 0.4 for _ in ch),
                         num_res_blocks=tuple(rng.randint(1, 3) for _ in ch), norm_num_groups=g,
                         num_head_channels=rng.choice(heads), in_channels=rng.randint(1, 3),
                         out_channels=rng.randint(1, 3), spatial_dims=rng.choice([2, 3]),
                         resblock_updown=rng.random() < 0.5)
        ae = AEConfig(channels=tuple(ch), attention_levels=tuple(rng.random() < 0.4 for _ in ch),
                      num_res_blocks=tuple(rng.randint(1, 3) for _ in ch), latent_channels=rng.randint(1, 4),
                      norm_num_groups=g, with_encoder_nonlocal_attn=rng.random() < 0.5,
                      with_decoder_nonlocal_attn=rng.random() < 0.5)
        gan = DDGANConfig(unet=UNetConfig(**{**cfg.to_dict(), "spatial_dims": 2}), z_dim=rng.randint(1, 9),
                          w_dim=rng.randint(1, 9), mapping_layers=rng.randint(1, 3),
                          d_channels=tuple(rng.randint(1, 9) for _ in range(rng.randint(1, 3))))
        with torch.device("meta"):
            assert unet_size(cfg).params == _n(build_unet(cfg)), cfg
            assert autoencoder_size(ae).params == _n(CTAutoencoder(ae).net), ae
            assert generator_size(gan).params == _n(Generator(gan)), gan
            assert discriminator_size(gan).params == _n(Discriminator(gan)), gan


HOSTILE = {
    "channels [4096]*4": (_net(channels=[4096] * 4, attention_levels=[False] * 4, num_res_blocks=[1] * 4),
                          r"8e\+09 parameters \(limit 2e\+08"),
    "num_res_blocks 10**6": (_net(num_res_blocks=10 ** 6), r"6.7e\+10 parameters"),
    "activations": (_net(channels=[1024], attention_levels=[False], num_res_blocks=[1]),
                    r"8.32 GB of activations for one 256x256 image \(limit 8 GB"),
    "network []": (lambda c, d: c.update(network=[]), r"network: expected an object, got \[\]"),
    "files str": (lambda c, d: c.update(files="str"), r"files: expected an object, got 'str'"),
    "groups 0": (_net(norm_num_groups=0), r"network.config.norm_num_groups: expected an integer in \[1, "),
    "groups not dividing": (_net(norm_num_groups=3), r"norm_num_groups: 3 must divide every entry"),
    "heads 0": (_net(num_head_channels=0), r"network.config.num_head_channels: expected an integer"),
    "heads not dividing": (_net(num_head_channels=24), r"num_head_channels: 24 must divide channels\[-1\]=32"),
    "bool as int": (_net(in_channels=True), r"in_channels: expected an integer"),
    "float as int": (_net(channels=[16.0, 32]), r"channels\[0\]: expected an integer"),
    "too many levels": (_net(channels=[8] * 9), r"channels: expected a list of 1..8 entries"),
    "NaN eps": (_net(norm_eps=float("nan")), r"norm_eps: expected a finite number"),
    "unknown network key": (_net(bogus=1), r"network.config: unknown keys \['bogus'\]"),
    "unknown top-level key": (lambda c, d: c.update(bogus=1), r"\(top level\): unknown keys \['bogus'\]"),
    "missing files.model": (lambda c, d: c.update(files={}), r"files: missing entry 'model'"),
    "beta 1": (lambda c, d: c["schedule"]["betas"].__setitem__(3, 1.0), r"schedule.betas\[3\]: expected"),
    "v on VE": (lambda c, d: c.update(schedule={"type": "ve", "sigma_min": 0.01, "sigma_max": 50},
                                      prediction_type="v"), r"prediction_type: 'v' is defined for VP"),
    "shifts unequal": (lambda c, d: c.update(timestep_shifts={"timesteps": [1, 2], "shifts": [0.1]}),
                       r"timestep_shifts.shifts: expected a list of 2..2"),
    "hfs extra": (lambda c, d: c["extra"].update(hfs={"type": "hfs"}), r"extra.hfs: missing entry 'acs'"),
    "optimizer meta": (lambda c, d: c["files"].update(optimizer="model.safetensors"),
                       r"optimizer: files.optimizer is listed but the 'optimizer' entry is missing"),
    "dotdot": (lambda c, d: c["files"].update(model="../ck/model.safetensors"),
               r"files.model: expected a file name inside the checkpoint folder"),
    "absolute": (lambda c, d: c["files"].update(model="/etc/passwd"), r"files.model: expected a file name inside"),
    "symlink out": (lambda c, d: (os.symlink("/etc/passwd", d / "p.safetensors"),
                                  c["files"].update(model="p.safetensors")), r"files.model: .* outside the checkpoint"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_configs_fail_with_one_line_naming_file_and_key(base, tmp_path, name):
    edit, pattern = HOSTILE[name]
    d = _variant(base, tmp_path, edit)
    with pytest.raises(CheckpointConfigError, match=pattern) as e:
        load_model(d)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(d)), msg


def test_config_json_itself_malformed(base, tmp_path):
    d = _variant(base, tmp_path, lambda c, d: None)
    for text, pattern in [("[" * 100_000, "not valid JSON"), ('{"version": ' + "1" * 5000 + "}", "not valid JSON"),
                          ("[1, 2]", r"\(top level\): expected an object"),
                          (b"\xff\xfe", "not valid JSON")]:
        (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(CheckpointConfigError, match=pattern):
            load_checkpoint(d)


def test_weights_dtype_and_headers_checked_before_loading(base, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _variant(base, tmp_path, lambda c, d: None)
    sd = load_file(str(d / "model.safetensors"))
    save_file({k: v.to(torch.int32) for k, v in sd.items()}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointConfigError, match=r"model.safetensors: weight .* is I32 .*expects torch.float32"):
        load_model(d)
    save_file({k: v.double() for k, v in sd.items()}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointConfigError, match="is F64"):
        load_model(d)
    raw = (base / "model.safetensors").read_bytes()
    for bad, pattern in [(raw[:5], "shorter than the 8-byte"), (raw[:1000], "header length"),
                         ((10 ** 12).to_bytes(8, "little") + raw[8:], "header length"),
                         (raw[:-4], "data offsets"), (raw[:8] + b"[" + raw[9:], "not JSON")]:
        (d / "model.safetensors").write_bytes(bad)
        with pytest.raises(CheckpointConfigError, match=pattern):
            load_model(d)


def test_confined_files_inside_the_folder_still_load(base, tmp_path):
    """A subfolder and a symlink whose target stays inside the folder are fine."""
    def edit(c, d):
        (d / "w").mkdir()
        os.replace(d / "model.safetensors", d / "w" / "m.safetensors")
        os.symlink("w/m.safetensors", d / "link.safetensors")
        c["files"]["model"] = "link.safetensors"
    d = _variant(base, tmp_path, edit)
    a, b = load_model(d).net.state_dict(), load_model(base).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_writer_produces_configs_the_schema_accepts(tmp_path):
    """save_checkpoint (EMA, optimizer, RNG, shifts, HFS extra), save_ddgan, the CT savers, and the
    shipped priors all load through the validating readers."""
    from medrecon.builtin_priors import BUILTIN_PRIORS, PRIORS, prior_path
    from medrecon.ct import autoencoder as AE
    from medrecon.ct import cold_diffusion as CD
    from medrecon.ct import pixel_ddpm as PD
    from medrecon.models.ddgan import DDGANConfig, build_ddgan, load_ddgan, save_ddgan

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VE(0.01, 50.0), "score", network_config=cfg)
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    model.raw(torch.zeros(1, 16, 16, dtype=torch.complex64), torch.tensor([0.5])).abs().sum().backward()
    opt.step()
    p = save_checkpoint(tmp_path / "full", model, {"network": cfg, "hfs": {"type": "hfs", "acs": 10},
                                                   "ema_decay": None, "seed": 3},
                        ema=model.net, optimizer=opt, rng={"cpu": torch.get_rng_state()},
                        timestep_shifts={"solver": "ddim", "timesteps": [999, 500], "shifts": [-3.0, 2.5]})
    ck = load_checkpoint(p)
    assert ck.optimizer is not None and ck.ema is not None and ck.timestep_shifts["shifts"] == [-3.0, 2.5]
    G, D = build_ddgan(DDGANConfig(unet="tiny", d_channels=(8, 8)), seed=0)
    og = torch.optim.Adam(G.parameters())
    load_ddgan(save_ddgan(tmp_path / "gan", G, D, ema=G.state_dict(), opt_g=og, extra={"seed": 0}))
    ae = AE.CTAutoencoder("tiny")
    assert AE.load_autoencoder(AE.save_autoencoder(tmp_path / "ae", ae)).config == ae.config
    cold = CD.LatentColdDiffusion(build_unet(cfg), CD.ColdSchedule(5), cfg)
    CD.load_cold_diffusion(CD.save_cold_diffusion(tmp_path / "cold", cold, ema=cold.net.state_dict()))
    pix = PD.ConditionalDDPM(build_unet(preset("tiny", in_channels=2, out_channels=1)), make_betas("linear", 50),
                             preset("tiny", in_channels=2, out_channels=1))
    PD.load_pixel_ddpm(PD.save_pixel_ddpm(tmp_path / "pix", pix, ema=pix.net.state_dict()))
    for name in BUILTIN_PRIORS:
        path = prior_path(name)
        if PRIORS[name].kind == "ddgan":  # a DDGAN generator: its own schema and reader
            assert load_ddgan(path).generator.cfg.unet.in_channels == 2
            continue
        if PRIORS[name].kind == "ct-latent-cold":  # two CT checkpoints, their schema (medrecon.ct.checkpoint)
            assert AE.load_autoencoder(path / "autoencoder").config.downsample_factor == 2
            assert CD.load_cold_diffusion(path / "latent").T == 10
            continue
        if PRIORS[name].kind == "ct-pixel-ddpm":  # a model checkpoint with the pixel DDPM's extra.kind
            validate_checkpoint(json.loads((path / "config.json").read_text()), path / "config.json")
            assert PD.load_pixel_ddpm(path).net is not None
            continue
        validate_checkpoint(json.loads((path / "config.json").read_text()), path / "config.json")
        assert load_model(path).in_channels == 2


def test_ddgan_and_ct_configs_validated_before_building(tmp_path):
    from medrecon.ct import autoencoder as AE
    from medrecon.ct import cold_diffusion as CD
    from medrecon.models.ddgan import DDGANConfig, build_ddgan, load_ddgan, save_ddgan

    G, D = build_ddgan(DDGANConfig(unet="tiny", d_channels=(8,)), seed=0)
    gan = save_ddgan(tmp_path / "gan", G, D)
    ae = AE.save_autoencoder(tmp_path / "ae", AE.CTAutoencoder("tiny"))
    cold = CD.save_cold_diffusion(tmp_path / "cold", CD.LatentColdDiffusion(build_unet("tiny"), CD.ColdSchedule(4),
                                                                             preset("tiny")))
    cases = [
        (gan, lambda c: c["config"].update(d_channels=[16384] * 8), load_ddgan,
         r"\(discriminator\): the network would"),
        (gan, lambda c: c["config"].update(unet="huge"), load_ddgan, r"config.unet: expected one of \['tiny'"),
        (gan, lambda c: c["config"].update(z_dim=0), load_ddgan, r"config.z_dim: expected an integer in \[1, 4096\]"),
        (gan, lambda c: c["files"].update(generator="../gan/generator.safetensors"), load_ddgan, "files.generator"),
        (ae, lambda c: c["config"]["network"]["config"].update(channels=[4096] * 4, num_res_blocks=[1] * 4,
                                                               attention_levels=[False] * 4),
         AE.load_autoencoder, "parameters"),
        (ae, lambda c: c["config"].update(scale_factor=float("inf")), AE.load_autoencoder, "config.scale_factor"),
        (ae, lambda c: c.update(kind="ct-latent-cold-diffusion"), AE.load_autoencoder, "kind: checkpoint holds"),
        (cold, lambda c: c["config"]["schedule"].update(abar=[1.0, 0.5, 0.7, 0.0]), CD.load_cold_diffusion,
         r"config.schedule.abar: expected a non-increasing table"),
        (cold, lambda c: c["config"]["network"]["config"].update(num_res_blocks=10 ** 6), CD.load_cold_diffusion,
         "parameters"),
    ]
    for path, edit, loader, pattern in cases:
        text = (path / "config.json").read_text()
        cfg = json.loads(text)
        edit(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointConfigError, match=pattern):
            loader(path)
        (path / "config.json").write_text(text)


_MEASURE = textwrap.dedent("""
    import json, sys, time
    from medrecon.models.checkpoint import load_model
    from medrecon.models.config_schema import CheckpointConfigError

    def status(key):  # kB -> MB
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

    out = {}
    for d in sys.argv[1:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        rss, t0 = status("VmRSS:"), time.perf_counter()
        try:
            load_model(d)
            err = None
        except CheckpointConfigError as e:
            err = str(e)
        out[d] = {"seconds": time.perf_counter() - t0, "extra_mb": status("VmHWM:") - rss, "rss_mb": rss,
                  "error": err}
    print(json.dumps(out))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc needed to reset the peak RSS")
def test_hostile_configs_fail_fast_in_little_memory(base, tmp_path):
    """In a fresh process: the peak RSS during the failing call (VmHWM, reset before it) minus the RSS
    before it stays under 100 MB; a timeout guards against hangs (no speed assertion)."""
    dirs = []
    for i, name in enumerate(["channels [4096]*4", "num_res_blocks 10**6"]):
        dirs.append(str(_variant(base, tmp_path / str(i), HOSTILE[name][0])))
    res = subprocess.run([sys.executable, "-c", _MEASURE, *dirs], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.splitlines()[-1])
    for d in dirs:
        assert out[d]["error"] and "parameters" in out[d]["error"]
        assert out[d]["extra_mb"] < 100, out


def test_cli_and_api_give_one_line(base, tmp_path, capsys):
    from medrecon import reconstruct
    from medrecon.cli.main import main
    from medrecon.datasets.demo import make_demo_file

    bad = _variant(base, tmp_path, HOSTILE["channels [4096]*4"][0])
    demo = make_demo_file(tmp_path / "demo.h5", n_slices=1, coils=2, size=(64, 64))
    assert main(["recon", str(demo), "--method", "ddnm", "-o", f"checkpoint={bad}", "--quiet",
                 "--center-fraction", "0.16"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "parameters (limit 2e+08" in err, err
    k = torch.randn(2, 16, 16, dtype=torch.complex64)
    with pytest.raises(CheckpointConfigError, match="parameters"):
        reconstruct(k, torch.ones(16, 16), "ddnm", checkpoint=str(bad),
                    smaps=torch.ones(2, 16, 16, dtype=torch.complex64) / 2 ** 0.5)
