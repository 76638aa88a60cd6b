"""`medrecon recon` output formats: .h5 attrs, NIfTI affine + sidecar, DICOM series."""
import json

import h5py
import numpy as np
import pytest

from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_volume
from medrecon.datasets.dicom import read_dicom_series
from medrecon.datasets.fastmri import make_ismrmrd_header, write_fastmri
from medrecon.datasets.nifti import read_nifti

FOV = (200.0, 180.0, 4.0)  # recon FOV (x, y, z) mm: distinct spacings for a 64x64 matrix


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    v = make_demo_volume(n_slices=2, coils=4, size=(64, 64))
    hdr = make_ismrmrd_header((128, 64, 1), (64, 64, 1), (400.0, 180.0, 4.0), FOV)
    path = tmp_path_factory.mktemp("fmt") / "demo.h5"
    return write_fastmri(path, v["kspace"], header=hdr, reconstruction_rss=v["target"])


def _run(demo, *extra):
    return main(["recon", str(demo), "--method", "zero-filled", "--quiet", "--json",
                 "--sample-seed", "3", *extra])


def test_h5_attrs(demo, tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert _run(demo, "--out", str(out)) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["seed"] == 3 and rec["output"] == str(out)
    with h5py.File(out) as f:
        assert f["reconstruction"].shape == (2, 64, 64)
        a = dict(f.attrs)
    assert a["method"] == "zero-filled" and a["nfe"] == 0 and a["seed"] == 3
    assert a["seconds"] >= 0 and json.loads(a["mask"])["kind"] == "equispaced_fraction"
    assert json.loads(a["options"]) == rec["options"]
    assert main(["info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "reconstruction" and info["attrs"]["method"] == "zero-filled"
    assert info["attrs"]["options"] == rec["options"] and info["attrs"]["slices"] == [0, 2]


@pytest.mark.parametrize("name", ["r.nii.gz", "r.nii"])
def test_nifti_affine_and_sidecar(demo, tmp_path, capsys, name):
    out = tmp_path / name
    assert _run(demo, "--out", str(out), "--slices", "1") == 0
    nv = read_nifti(out)
    assert nv.volume.shape == (1, 64, 64)
    spacing = np.linalg.norm(nv.affine[:3, :3], axis=0)  # (slice, row, col)
    np.testing.assert_allclose(spacing, [FOV[2], FOV[0] / 64, FOV[1] / 64])
    side = nv.header["sidecar"]
    assert {"method", "options", "nfe", "seconds", "seed", "mask"} <= set(side)
    assert side["method"] == "zero-filled" and side["seed"] == 3 and side["slices"] == [1, 2]
    rec = json.loads(capsys.readouterr().out)
    assert rec["output"] == str(out)


def test_dicom_series(demo, tmp_path):
    out = tmp_path / "series"
    assert _run(demo, "--out", str(out), "--format", "dicom", "--batch-size", "2") == 0
    s = read_dicom_series(out)
    assert s.volume.shape == (2, 64, 64) and s.modality == "MR"
    assert s.header.SeriesDescription == "medrecon zero-filled"
    assert "zero-filled" in s.header.DerivationDescription and '"seed": 3' in \
        s.header.DerivationDescription
    np.testing.assert_allclose(s.pixel_spacing, (FOV[0] / 64, FOV[1] / 64), rtol=1e-5)
    np.testing.assert_allclose(s.slice_spacing, FOV[2], rtol=1e-5)


def test_folder_outputs_and_errors(demo, tmp_path, capsys):
    assert _run(demo, "--out", str(tmp_path / "o"), "--format", "nifti") == 0
    assert (tmp_path / "o" / "demo.nii.gz").is_file() and (tmp_path / "o" / "demo.json").is_file()
    assert _run(demo, "--out", str(tmp_path / "x.h5"), "--format", "nifti") == 2  # usage
    assert "contradicts" in capsys.readouterr().err
