import json

from medrecon.cli.main import main


def test_methods_json_lists_registry(capsys):
    assert main(["methods", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = {r["name"] for r in rows}
    assert {"zero-filled", "cg-sense", "l1-wavelet", "spirit-cg"} <= names
    cg = next(r for r in rows if r["name"] == "cg-sense")
    assert cg["options"]["max_iter"] == 10 and cg["needs_smaps"] is True


def test_methods_table(capsys):
    assert main(["methods"]) == 0
    assert "cg-sense" in capsys.readouterr().out


def test_methods_lists_ct_methods_with_their_modality(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    for name in ("fbp", "latent-cold-diffusion", "pixel-ddpm"):
        assert rows[name]["modality"] == "ct" and rows[name]["prior"] is None
    assert rows["fbp"]["options"]["filter"] == "ramp" and rows["fbp"]["kind"] == "classical"
    assert rows["pixel-ddpm"]["options"]["steps"] == 50
    assert rows["cg-sense"]["modality"] == "mri"
    assert main(["methods"]) == 0
    assert "fbp            [ct]" in capsys.readouterr().out
