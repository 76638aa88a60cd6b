"""CT methods through the one pipeline: `reconstruct_file` on a simulated CT series equals the
documented computation (simulate the low-dose scan, FBP), and `run_batch` over a folder holding
a CT series and a sinogram file writes, resumes and adopts like an MRI batch."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from medrecon.batch import STATE_DIR, run_batch
from medrecon.ct.inputs import write_sinogram
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.geometry import dicom_affine
from medrecon.pipeline import reconstruct_file

N = 32


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    """``inputs/series`` (a 2-slice DICOM CT series) and ``inputs/scan.h5`` (a sinogram file)."""
    from medrecon.datasets.simulate_ct import simulate_ct_volume

    v = simulate_ct_volume(2, N, 48, i0=1e4, seed=7)
    d = tmp_path_factory.mktemp("ct") / "inputs"
    d.mkdir()
    px = float(v["attrs"]["pixel_size_mm"])
    write_dicom_series(np.rint(v["image_hu"]), d / "series", modality="CT",
                       affine=dicom_affine((1, 0, 0, 0, 1, 0), (px, px), (0, 0, 0), 2.0))
    write_sinogram(d / "scan.h5", v["sinogram_lowdose"], angles=np.deg2rad(v["angles_deg"]),
                   pixel_size=px, detector_spacing=px, reference_hu=v["image_hu"])
    return d


def test_reconstruct_file_fbp_of_a_series_is_the_documented_simulation(ct_folder, tmp_path):
    from medrecon.datasets.geometry import ras_to_lps
    from medrecon.datasets.nifti import read_nifti
    from medrecon.physics.ct import MU_WATER, ParallelBeam, fbp, hu_to_mu, mu_to_hu, simulate_lowdose

    rec = reconstruct_file(ct_folder / "series", "fbp", out=tmp_path / "f.nii.gz",
                           options={"i0": "2e4", "noise_seed": "4"})
    src = read_dicom_series(ct_folder / "series")
    px = float(src.pixel_spacing[0])
    n_angles = 3 * N // 2  # the documented default
    # the whole square is projected (ceil(sqrt(2) N) detectors, circle=False), HU clipped at air
    geo = ParallelBeam(N, torch.arange(n_angles, dtype=torch.float64) * (math.pi / n_angles),
                       math.ceil(math.sqrt(2) * N), detector_spacing=px, pixel_size=px, circle=False)
    hu = np.maximum(src.volume.astype(np.float64), -1000.0)
    clean = geo.forward(hu_to_mu(torch.from_numpy(hu), MU_WATER))
    low = torch.stack([simulate_lowdose(clean[k], 2e4, 5.0, torch.Generator().manual_seed(4 + k))
                       for k in range(2)])
    want = mu_to_hu(fbp(low, geo, "ramp"), MU_WATER).numpy()
    nv = read_nifti(tmp_path / "f.nii.gz")
    np.testing.assert_allclose(nv.volume, want, atol=1e-3)
    np.testing.assert_allclose(ras_to_lps(nv.affine), src.affine, atol=1e-4)  # the input's grid
    assert rec["method"] == "fbp" and rec["units"] == "HU" and rec["mask"] is None
    assert rec["options"]["i0"] == 2e4 and rec["options"]["filter"] == "ramp"
    assert rec["simulation"]["noise_seed"] == 4 and rec["nfe"] == 0 and rec["seed"] is None
    side = json.loads((tmp_path / "f.json").read_text())
    assert side["units"] == "HU" and side["file"] == "series" and side["geometry"]["image_size"] == N
    # the API refuses an MRI method on a CT scan, naming the CT methods
    with pytest.raises(ValueError, match="CT scan.*fbp"):
        reconstruct_file(ct_folder / "scan.h5", "zero-filled")


def test_batch_over_a_folder_with_a_ct_series(ct_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # in-process
    out = tmp_path / "out"
    first = run_batch(ct_folder, out, "fbp", options={"filter": "hann"})
    assert [r.status for r in first.results] == ["done", "done"] and not first.failed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["scan", "series"]
    s = read_dicom_series(out / "series")  # CT methods default to a DICOM series in HU
    assert s.modality == "CT" and s.volume.shape == (2, N, N)
    assert str(s.header.DerivationDescription).startswith("medrecon fbp (HU) {")
    # the same image as reconstruct_file with the same options
    ref = reconstruct_file(ct_folder / "scan.h5", "fbp", out=tmp_path / "ref", out_format="dicom",
                           filter="hann")
    np.testing.assert_array_equal(read_dicom_series(out / "scan").volume,
                                  read_dicom_series(tmp_path / "ref").volume)
    assert first.results[0].record["metrics"] == ref["metrics"]  # inputs sorted: scan.h5, series
    # resume: both skipped; with the marker lost (a crash), the output's own metadata is adopted
    (out / STATE_DIR / "done" / "scan.json").unlink()
    again = run_batch(ct_folder, out, "fbp", options={"filter": "hann"})
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    # other settings: refused without overwrite
    other = run_batch(ct_folder, out, "fbp", options={"filter": "ramp"})
    assert [r.status for r in other.results] == ["failed", "failed"]
    assert "other settings" in other.results[0].error


def test_compare_ct_methods_on_one_scan(ct_folder, tmp_path, capsys):
    import csv

    from medrecon.cli.main import main

    out = tmp_path / "cmp"
    code = main(["compare", str(ct_folder / "scan.h5"), "--methods", "fbp", "--out", str(out),
                 "-o", "fbp.filter=hann", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "RMSE HU" in text and "fbp" in text
    with open(out / "results.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    rec = reconstruct_file(ct_folder / "scan.h5", "fbp", filter="hann")
    assert float(row["rmse_hu"]) == pytest.approx(rec["metrics"]["rmse_hu"])
    assert json.loads((out / "results.json").read_text())["results"][0]["options"]["filter"] == "hann"
    assert (out / "recon" / "fbp.h5").is_file()
    assert main(["compare", str(ct_folder / "scan.h5"), "--methods", "fbp,zero-filled"]) == 2
    assert "mixes MRI and CT" in capsys.readouterr().err
