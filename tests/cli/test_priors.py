"""`medrecon priors`: every shipped prior listed with facts read from its checkpoint (parameters from the
safetensors header equal the loaded network's), its registry users, and ``--json`` for pipelines."""
import json

import pytest
from safetensors.torch import load_file

from medrecon.builtin_priors import PRIORS, describe, prior_path, weights_parameters
from medrecon.cli.main import main
from medrecon.models.checkpoint import load_checkpoint
from medrecon.models.ddgan import load_ddgan


def test_json_rows_match_the_checkpoints(capsys):
    assert main(["priors", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(PRIORS)
    for r in rows:
        if r["kind"].startswith("ct-"):  # checked in tests/methods/test_builtin_ct_priors.py
            continue
        path = prior_path(r["name"])
        weights = "generator.safetensors" if r["kind"] == "ddgan" else "model.safetensors"
        assert r["parameters"] == sum(w.numel() for w in load_file(str(path / weights)).values())
        assert r["size_bytes"] == sum(p.stat().st_size for p in path.iterdir())
        assert r["size_bytes"] < 20 * 2 ** 20  # small enough to ship
        if r["kind"] == "ddgan":
            ck = load_ddgan(path)  # a generator FDMR can load: EMA weights exported, no optimizer state
            assert ck.opt_g is None and ck.ema is None and ck.extra["weights"] == "ema"
            assert r["parameters"] == sum(p.numel() for p in ck.generator.parameters())
        else:
            ck = load_checkpoint(path)
            assert r["kind"] == {"eps": "vp", "hfs": "hfs", "distill-chain": "distilled"}[ck.extra["objective"]]
        assert r["training_steps"] == sum(r["training_runs"]) and r["training_runs"][-1] == ck.step
        assert r["nfe"] >= 1 and "384" in r["training_data"]  # fine-tuned on 128-384 matrices (docs/priors.md)
    by_name = {r["name"]: r for r in rows}
    assert {"dds", "ddnm", "ccdf"} <= set(by_name["brain128-vp"]["default_of"])
    assert by_name["brain128-hfs"]["default_of"] == ["hfs-sde"]
    assert by_name["brain128-ddgan"]["default_of"] == ["fdmr"]
    assert by_name["ct128-pixel-ddpm"]["default_of"] == ["pixel-ddpm"]
    assert by_name["ct128-latent-cold"]["default_of"] == ["latent-cold-diffusion"]


def test_table_names_every_prior(capsys):
    assert main(["priors"]) == 0
    out = capsys.readouterr().out
    for name in PRIORS:
        assert f"{name}  [{PRIORS[name].kind}]" in out and f"-o checkpoint={name}" in out
    assert "1,035,922" in out


def test_weights_header_errors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        weights_parameters(bad)
    with pytest.raises(ValueError, match="unknown builtin prior 'brain256'"):
        describe("brain256")
