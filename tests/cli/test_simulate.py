"""`medrecon simulate mri|ct` end to end, including `medrecon recon` on a simulated file."""
import json

import pytest

from medrecon.cli.main import main
from medrecon.datasets.fastmri import FastMRIFile
from medrecon.datasets.simulate_ct import read_ct

MRI = ["simulate", "mri", "--n-volumes", "1", "--slices-per-volume", "2", "--coils", "4",
       "--size", "32", "64", "--snr", "40", "--seed", "7", "--quiet"]


def test_simulate_mri_then_recon(tmp_path, capsys):
    assert main([*MRI, "--out", str(tmp_path)]) == 0
    (f,) = sorted(tmp_path.glob("*.h5"))
    with FastMRIFile(f) as h:
        assert h.shape == (2, 4, 64, 64) and h.recon_size == (32, 64)
    capsys.readouterr()
    # 64 columns: centre fraction 0.16 keeps >= 8 ACS lines for ESPIRiT
    recon = ["recon", str(f), "--json", "--quiet", "--center-fraction", "0.16", "--slices", "1"]
    assert main([*recon, "--method", "zero-filled"]) == 0
    assert main([*recon, "--method", "cg-sense", "-o", "max_iter=10"]) == 0
    zf, cg = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert cg["recon_size"] == [32, 64] and cg["slices"] == [1, 2]
    assert cg["metrics"]["psnr"] > 15 and cg["metrics"]["ssim"] > zf["metrics"]["ssim"] + 0.1


def test_simulate_mri_overwrite(tmp_path, capsys):
    assert main([*MRI, "--out", str(tmp_path)]) == 0
    assert main([*MRI, "--out", str(tmp_path)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main([*MRI, "--out", str(tmp_path), "--overwrite"]) == 0


@pytest.mark.parametrize("extra", [["--n-volumes", "0"], ["--coils", "8", "4"],
                                   ["--snr", "-1"], ["--size", "8", "8"],
                                   ["--coils", "2", "3", "4"]])
def test_simulate_mri_bad_arguments_exit_2(tmp_path, capsys, extra):
    assert main([*MRI, "--out", str(tmp_path), *extra]) == 2
    assert "error" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.h5"))


def test_simulate_ct(tmp_path, capsys):
    args = ["simulate", "ct", "--out", str(tmp_path / "ct"), "--n-volumes", "1",
            "--slices-per-volume", "1", "--size", "32", "--angles", "16", "--i0", "1e4",
            "--sigma-e", "2"]
    assert main(args) == 0
    assert "wrote 1 file" in capsys.readouterr().out
    (f,) = (tmp_path / "ct").glob("*.h5")
    d = read_ct(f)
    assert d["sinogram"].shape == (1, 16, 32) and d["attrs"]["I0"] == 1e4
    assert main([*args[:3], str(tmp_path / "x"), "--n-volumes", "1", "--i0", "0"]) == 2
