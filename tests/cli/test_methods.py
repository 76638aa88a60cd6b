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
    expected = {"fbp": None, "latent-cold-diffusion": "ct128-latent-cold", "pixel-ddpm": "ct128-pixel-ddpm"}
    for name, prior in expected.items():
        assert rows[name]["modality"] == "ct" and rows[name]["prior"] == prior
    assert rows["fbp"]["options"]["filter"] == "ramp" and rows["fbp"]["kind"] == "classical"
    assert rows["pixel-ddpm"]["options"]["steps"] == 20 and rows["pixel-ddpm"]["options"]["ldct_above"] == 300
    assert rows["cg-sense"]["modality"] == "mri"
    assert main(["methods"]) == 0
    assert "fbp            [ct]" in capsys.readouterr().out
