"""`medrecon info` on each supported format, and its errors."""
import json

import numpy as np
import pytest

from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_file
from medrecon.datasets.dicom import write_dicom_series
from medrecon.datasets.fastmri import FastMRIFile, write_fastmri
from medrecon.datasets.nifti import write_nifti
from medrecon.datasets.simulate_ct import simulate_ct_volume, write_ct


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_file(tmp_path_factory.mktemp("info") / "demo.h5", n_slices=2, coils=4,
                          size=(64, 64))


def _info(capsys, *paths):
    code = main(["info", "--json", *map(str, paths)])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_fastmri_train_and_test_files(demo, tmp_path, capsys):
    with FastMRIFile(demo) as f:
        k, hdr = f.kspace[()], f._h5["ismrmrd_header"][()].decode()
    m = np.zeros(64, bool)
    m[::4] = m[28:36] = True
    test_file = write_fastmri(tmp_path / "t.h5", k * m, header=hdr, mask=m,
                              attrs={"acceleration": 4, "num_low_frequency": 8})
    code, (a, b), _ = _info(capsys, demo, test_file)
    assert code == 0
    assert {"file", "format", "kind", "slices", "coils", "kspace_shape", "recon_size", "has_mask",
            "acceleration", "targets", "attrs"} <= set(a)
    assert a["format"] == "fastmri" and a["kind"] == "multicoil"
    assert a["slices"] == 2 and a["coils"] == 4 and a["kspace_shape"] == [2, 4, 128, 64]
    assert a["recon_size"] == [64, 64] and a["targets"] == ["reconstruction_rss"]
    assert a["has_mask"] is False and a["acceleration"] is None
    assert a["attrs"]["patient_id"] == "medrecon-demo-0"
    assert b["has_mask"] is True and b["acceleration"] == 4 and b["targets"] == []


def test_ct_nifti_dicom_and_reconstruction(tmp_path, capsys):
    ct = write_ct(tmp_path / "ct.h5", simulate_ct_volume(n_slices=2, size=16, n_angles=8))
    vol = np.random.default_rng(0).random((3, 8, 6)).astype(np.float32)
    affine = np.diag([2.0, 0.5, 0.75, 1.0])
    nii = write_nifti(vol, tmp_path / "v.nii.gz", affine, sidecar={"method": "x"})
    dcm = write_dicom_series(vol, tmp_path / "dcm", series_description="hello")
    code, (c, n, d), _ = _info(capsys, ct, nii, dcm)
    assert code == 0
    assert c["format"] == "ct-sim" and c["slices"] == 2 and c["n_angles"] == 8
    assert c["sinogram_shape"] == [2, 8, 16] and "I0" in c["attrs"]
    assert n["format"] == "nifti" and n["shape"] == [3, 8, 6] and n["sidecar"] == {"method": "x"}
    assert sorted(n["spacing_mm"]) == [0.5, 0.75, 2.0] and len(n["affine"]) == 4
    assert d["format"] == "dicom" and d["shape"] == [3, 8, 6] and d["modality"] == "MR"
    assert d["series_description"] == "hello" and d["files"] == 3
    assert {"pixel_spacing", "slice_spacing", "orientation", "series_uid"} <= set(d)


def test_text_output_and_unknown_formats(demo, tmp_path, capsys):
    assert main(["info", str(demo)]) == 0
    assert "fastmri" in capsys.readouterr().out
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a medical image")
    code, recs, err = _info(capsys, junk, demo, tmp_path / "missing.h5")
    assert code == 1 and len(recs) == 1
    assert "junk.bin: unknown format" in err and "missing.h5" in err
    import h5py
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["foo"] = np.zeros(3)
    code, _, err = _info(capsys, tmp_path / "other.h5")
    assert code == 1 and "neither fastMRI" in err
