"""`medrecon recon` / `medrecon demo` end to end on tiny demo files."""
import json

import h5py
import numpy as np
import pytest

from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_file
from medrecon.datasets.fastmri import FastMRIFile, write_fastmri
from medrecon.physics.masks import make_mask

KEYS = {"file", "method", "options", "nfe", "samples", "seconds", "seconds_per_slice", "slices", "shape",
        "recon_size", "mask", "seed", "output", "metrics", "input_format", "simulation", "prior", "medrecon_version"}
# 64 columns: the default centre fraction 0.08 keeps 5 ACS lines, too few for ESPIRiT.
ACS = ["--center-fraction", "0.16"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return make_demo_file(d / "demo.h5", n_slices=2, coils=4, size=(64, 64))


def _records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_schema_and_metrics(demo, capsys, tmp_path):
    out = tmp_path / "rec.h5"
    assert main(["recon", str(demo), "--method", "cg-sense", "--json", "--out", str(out),
                 "-o", "max_iter=5", "--quiet", *ACS]) == 0
    (rec,) = _records(capsys)
    assert set(rec) == KEYS
    assert rec["input_format"] == "fastmri" and rec["simulation"] is None
    assert rec["nfe"] == 0 and rec["options"]["max_iter"] == 5 and rec["slices"] == [0, 2]
    assert rec["mask"]["kind"] == "equispaced_fraction" and rec["mask"]["acceleration"] == 4
    assert set(rec["metrics"]) == {"nmse", "psnr", "ssim"}
    with h5py.File(out) as f:
        assert f["reconstruction"].shape == (2, 64, 64)
        assert f["reconstruction"].dtype == np.float32


def test_cg_sense_beats_zero_filled(demo, capsys):
    main(["recon", str(demo), "--method", "zero-filled", "--json", "--quiet", *ACS])
    main(["recon", str(demo), "--method", "cg-sense", "--json", "--quiet", *ACS])
    zf, cg = _records(capsys)
    assert cg["metrics"]["psnr"] > zf["metrics"]["psnr"] + 3


def test_overwrite_protection(demo, capsys, tmp_path):
    out = tmp_path / "o.h5"
    assert main(["recon", str(demo), "--method", "zero-filled", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["recon", str(demo), "--method", "zero-filled", "--out", str(out)]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["recon", str(demo), "--method", "zero-filled", "--out", str(out),
                 "--overwrite"]) == 0


def test_file_with_own_mask_has_no_metrics(demo, capsys, tmp_path):
    with FastMRIFile(demo) as f:
        k = f.kspace[()]
        hdr = f._h5["ismrmrd_header"][()].decode()
    m = make_mask("random", k.shape[-2:], 4, 0.08, seed=1)[0].numpy()
    test_file = tmp_path / "test.h5"
    write_fastmri(test_file, k * m, header=hdr, mask=m)
    assert main(["recon", str(test_file), "--method", "zero-filled", "--json"]) == 0
    (rec,) = _records(capsys)
    assert rec["mask"] == "file" and rec["metrics"] is None


def test_batch_reports_bad_file_and_continues(demo, capsys, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"nope")
    code = main(["recon", str(bad), str(demo), "--method", "zero-filled", "--json",
                 "--slices", "0:1"])
    captured = capsys.readouterr()
    assert code == 1 and "bad.h5" in captured.err
    assert len(captured.out.splitlines()) == 1


def test_argument_errors(demo, capsys):
    assert main(["recon", str(demo), "--method", "nope"]) == 2
    assert "valid methods" in capsys.readouterr().err
    assert main(["recon", str(demo), "-o", "iters=3"]) == 2
    assert "valid options" in capsys.readouterr().err
    assert main(["recon", str(demo), "--acceleration", "0.5"]) == 2
    assert main(["recon", str(demo), "--center-fraction", "1.5"]) == 2
    assert main(["recon", str(demo), "--slices", "7:9", "--method", "zero-filled"]) == 1
    assert "select nothing" in capsys.readouterr().err


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--methods", "zero-filled", "cg-sense"]) == 0
    out = capsys.readouterr().out
    assert "cg-sense" in out and "PSNR" in out
    assert (tmp_path / "demo_multicoil.h5").exists() and (tmp_path / "recon_cg-sense.h5").exists()
