"""`medrecon recon` on CT inputs (the CT methods of the registry, `medrecon.methods.ct`, through
`medrecon.pipeline.reconstruct_file`): DICOM CT series and sinogram files, FBP / latent cold
diffusion / pixel DDPM, NIfTI / DICOM / HDF5 outputs, bad inputs."""
import json
import math

import h5py
import numpy as np
import pytest
import torch

from medrecon.cli.main import main
from medrecon.ct import data as ctdata
from medrecon.ct.inputs import is_ct_input, write_sinogram
from medrecon.registry import list_methods
from medrecon.physics.ct import FanBeam, ParallelBeam, fbp, hu_to_mu, mu_to_hu, short_scan_range

N = 32


@pytest.fixture(scope="module")
def phantom_hu():
    from medrecon.datasets.simulate_ct import simulate_ct_volume

    v = simulate_ct_volume(2, N, 48, i0=1e4, seed=1000)
    return v


@pytest.fixture(scope="module")
def dicom_ct(tmp_path_factory, phantom_hu):
    from medrecon.datasets.dicom import write_dicom_series
    from medrecon.datasets.geometry import dicom_affine

    d = tmp_path_factory.mktemp("dcm") / "series"
    px = float(phantom_hu["attrs"]["pixel_size_mm"])
    aff = dicom_affine((1, 0, 0, 0, 1, 0), (px, px), (0, 0, 0), 2.0)
    write_dicom_series(np.rint(phantom_hu["image_hu"]), d, modality="CT", affine=aff)
    return d


@pytest.fixture(scope="module")
def sino_file(tmp_path_factory, phantom_hu):
    p = tmp_path_factory.mktemp("sino") / "scan.h5"
    px = float(phantom_hu["attrs"]["pixel_size_mm"])
    write_sinogram(p, phantom_hu["sinogram_lowdose"], angles=np.deg2rad(phantom_hu["angles_deg"]),
                   pixel_size=px, detector_spacing=px, reference_hu=phantom_hu["image_hu"])
    return p


def _run(capsys, *argv):
    rc = main(["recon", *map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return rc, out


def test_detection(dicom_ct, sino_file, tmp_path):
    ct_methods = {s.name for s in list_methods() if s.modality == "ct"}
    assert ct_methods >= {"fbp", "latent-cold-diffusion", "pixel-ddpm"}
    assert is_ct_input(dicom_ct) and is_ct_input(sino_file)
    mri = tmp_path / "k.h5"
    with h5py.File(mri, "w") as f:
        f.create_dataset("kspace", data=np.zeros((1, 4, 4), np.complex64))
    assert not is_ct_input(mri)
    assert not is_ct_input(tmp_path / "missing.h5")


def test_fbp_dicom_series_to_nifti_and_dicom(dicom_ct, phantom_hu, tmp_path, capsys):
    import nibabel as nib
    from medrecon.datasets.dicom import read_dicom_series

    out = tmp_path / "fbp.nii.gz"
    rc, o = _run(capsys, dicom_ct, "--method", "fbp", "--out", out, "--json", "-o", "i0=2e4")
    assert rc == 0, o.err
    rec = json.loads(o.out.strip().splitlines()[-1])
    assert rec["method"] == "fbp" and rec["units"] == "HU" and rec["input_format"] == "dicom"
    assert rec["simulation"]["i0"] == 2e4 and rec["nfe"] == 0
    # a low-dose FBP is within noise of the noise-free FBP reference, not wildly off
    assert 5 < rec["metrics"]["rmse_hu"] < 150
    vol = np.asarray(nib.load(out).dataobj)
    assert vol.shape[-1] == 2 or vol.shape[0] == 2
    assert np.isfinite(vol).all()
    side = json.loads(out.with_name("fbp.json").read_text())
    assert side["method"] == "fbp" and side["units"] == "HU"
    # refuses to overwrite (before any work), then does with --overwrite
    rc, o = _run(capsys, dicom_ct, "--method", "fbp", "--out", out)
    assert rc == 1 and "--overwrite" in o.err
    rc, o = _run(capsys, dicom_ct, "--method", "fbp", "--out", out, "--overwrite")
    assert rc == 0, o.err
    # DICOM output: CT series in HU with the metadata, geometry of the input
    dout = tmp_path / "fbp_dcm"
    rc, o = _run(capsys, dicom_ct, "--method", "fbp", "--out", dout, "--format", "dicom")
    assert rc == 0, o.err
    s = read_dicom_series(dout)
    assert s.modality == "CT" and s.volume.shape == (2, N, N)
    assert str(s.header.SeriesDescription) == "medrecon fbp"
    assert "i0" in str(s.header.DerivationDescription)
    src = read_dicom_series(dicom_ct)
    np.testing.assert_allclose(s.slice_positions, src.slice_positions, atol=1e-4)
    # HU values: air outside ~ -1000, soft tissue inside near 0..100 after FBP
    assert s.volume.min() < -900 and np.median(s.volume[:, N // 2 - 3:N // 2 + 3, N // 2 - 3:N // 2 + 3]) > -200


def test_fbp_sinogram_file_equals_physics_fbp(sino_file, phantom_hu, tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc, o = _run(capsys, sino_file, "--method", "fbp", "--out", out, "--json", "-o", "filter=hann")
    assert rc == 0, o.err
    with h5py.File(out) as f:
        rec = f["reconstruction"][()]
        assert f.attrs["units"] == "HU"
    px = float(phantom_hu["attrs"]["pixel_size_mm"])
    geo = ParallelBeam(N, torch.from_numpy(np.deg2rad(phantom_hu["angles_deg"])), detector_spacing=px,
                       pixel_size=px)
    want = mu_to_hu(fbp(torch.from_numpy(phantom_hu["sinogram_lowdose"]).double(), geo, "hann"))
    np.testing.assert_allclose(rec, want.numpy(), atol=1e-2)
    assert json.loads(o.out)["metrics"]["rmse_hu"] > 0


def test_fan_beam_short_scan_file(tmp_path, phantom_hu, capsys):
    px = float(phantom_hu["attrs"]["pixel_size_mm"])
    mu = hu_to_mu(torch.from_numpy(phantom_hu["image_hu"][:1]).double())
    kw = dict(source_distance=3 * N * px, detector_distance=N * px, n_detectors=48,
              detector_spacing=1.2 * px, pixel_size=px)
    g0 = FanBeam(N, torch.zeros(2, dtype=torch.float64), kw["source_distance"], kw["detector_distance"],
                 48, kw["detector_spacing"], pixel_size=px)
    ang = torch.linspace(0, short_scan_range(g0), 120, dtype=torch.float64)
    g = FanBeam(N, ang, kw["source_distance"], kw["detector_distance"], 48, kw["detector_spacing"],
                pixel_size=px)
    p = tmp_path / "fan.h5"
    write_sinogram(p, g.forward(mu), geometry="fan", angles=ang, **kw)
    rc, o = _run(capsys, p, "--method", "fbp", "--json")
    assert rc == 0, o.err
    assert json.loads(o.out)["geometry"]["short_scan"] is True
    # too short a scan: clear error, nothing written
    p2 = tmp_path / "fan_short.h5"
    write_sinogram(p2, g.forward(mu)[:, :80], geometry="fan", angles=ang[:80], **kw)
    rc, o = _run(capsys, p2, "--method", "fbp", "--out", tmp_path / "x.nii.gz")
    assert rc == 1 and "pi + 2 gamma_max" in o.err
    assert not (tmp_path / "x.nii.gz").exists()


def test_bad_sinogram_inputs(tmp_path, phantom_hu, capsys):
    sino = phantom_hu["sinogram_lowdose"]
    # shape vs geometry: 48 views but 40 angles
    p = tmp_path / "mismatch.h5"
    write_sinogram(p, sino, angles=np.linspace(0, np.pi, 40, endpoint=False))
    rc, o = _run(capsys, p, "--method", "fbp")
    assert rc == 1 and "48 views" in o.err and "40 angles" in o.err
    p = tmp_path / "ndet.h5"
    write_sinogram(p, sino, n_detectors=40)
    rc, o = _run(capsys, p, "--method", "fbp")
    assert rc == 1 and "n_detectors = 40" in o.err
    # parallel angles covering only half of [0, pi)
    p = tmp_path / "half.h5"
    write_sinogram(p, sino, angles=np.linspace(0, np.pi / 2, sino.shape[1]))
    rc, o = _run(capsys, p, "--method", "fbp")
    assert rc == 1 and "cover" in o.err
    # counts with zeros / negatives: the log transform refuses them
    p = tmp_path / "counts.h5"
    counts = 1e4 * np.exp(-sino)
    counts[0, 3, 5] = 0.0
    counts[1, 2, 2] = -3.0
    write_sinogram(p, counts, counts=True, i0=1e4)
    rc, o = _run(capsys, p, "--method", "fbp", "--json")
    assert rc == 1 and "counts must be > 0" in o.err and "NaN" not in o.out
    # positive counts work and give finite HU
    counts = np.maximum(counts, 1.0)
    p = tmp_path / "counts_ok.h5"
    write_sinogram(p, counts, counts=True, i0=1e4)
    rc, o = _run(capsys, p, "--method", "fbp", "--json")
    assert rc == 0 and json.loads(o.out)["shape"] == [2, N, N]
    # NaN in a sinogram
    p = tmp_path / "nan.npy"
    bad = sino.copy()
    bad[0, 0, 0] = np.nan
    np.save(p, bad)
    rc, o = _run(capsys, p, "--method", "fbp")
    assert rc == 1 and "NaN" in o.err
    # usage errors (exit 2, nothing done): unknown option, bad i0, missing checkpoint
    rc, o = _run(capsys, p, "--method", "fbp", "-o", "bogus=1")
    assert rc == 2 and "'bogus'" in o.err
    rc, o = _run(capsys, p, "--method", "fbp", "-o", "i0=0")
    assert rc == 2 and "i0" in o.err
    rc, o = _run(capsys, p, "--method", "pixel-ddpm", "-o", f"checkpoint={tmp_path / 'no-such-run'}")
    assert rc == 2 and "checkpoint" in o.err and "no such folder" in o.err


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    from medrecon.ct import (save_autoencoder, save_cold_diffusion, save_pixel_ddpm, train_autoencoder,
                             train_cold_diffusion, train_pixel_ddpm)

    d = tmp_path_factory.mktemp("ck")
    pairs = ctdata.simulate_pairs(4, N, seed=0)
    data = (pairs["ndct"], pairs["ldct"])
    extra = {"data": {"size": N}}
    ae = train_autoencoder("tiny", data, steps=2, batch_size=2)
    save_autoencoder(d / "cold" / "autoencoder", ae.autoencoder, extra=extra)
    cold = train_cold_diffusion("tiny", ae.autoencoder, data, T=4, steps=2, batch_size=2)
    save_cold_diffusion(d / "cold" / "latent", cold.model, extra=extra)
    pix = train_pixel_ddpm("tiny", data, steps=2, batch_size=2)
    save_pixel_ddpm(d / "pixel", pix.model, extra=extra)
    return d


def test_network_methods(dicom_ct, sino_file, tiny_checkpoints, tmp_path, capsys):
    rc, o = _run(capsys, sino_file, "--method", "latent-cold-diffusion", "--json",
                 "-o", f"checkpoint={tiny_checkpoints / 'cold'}", "--out", tmp_path / "c.nii.gz")
    assert rc == 0, o.err
    rec = json.loads(o.out)
    assert rec["nfe"] == 4 and rec["metrics"] is not None
    rc, o = _run(capsys, dicom_ct, "--method", "pixel-ddpm", "--json", "--sample-seed", "3",
                 "-o", f"checkpoint={tiny_checkpoints / 'pixel'}", "-o", "steps=3", "-o", "solver=ddim",
                 "-o", "ldct_above=none", "-o", "clip_x0=2", "--out", tmp_path / "p", "--format", "dicom")
    assert rc == 0, o.err
    rec = json.loads(o.out)
    assert rec["nfe"] == 3 and rec["seed"] == 3 and rec["options"]["clip_x0"] == "2"
    # with -o dose=low the series is the LDCT image itself: fbp is refused, denoisers run
    rc, o = _run(capsys, dicom_ct, "--method", "fbp", "-o", "dose=low")
    assert rc == 1 and "dose=low" in o.err
    rc, o = _run(capsys, dicom_ct, "--method", "pixel-ddpm", "--json", "-o", "dose=low",
                 "-o", f"checkpoint={tiny_checkpoints / 'pixel'}", "-o", "steps=2")
    assert rc == 0 and json.loads(o.out)["metrics"] is None
    # another size than the networks' training size (32) runs: convolutional, padded and cropped
    p = tmp_path / "other.npy"
    np.save(p, np.ones((1, 24, 16), np.float32))  # 16 detectors: a 16 x 16 image
    rc, o = _run(capsys, p, "--method", "pixel-ddpm", "--json", "-o", "steps=2",
                 "-o", f"checkpoint={tiny_checkpoints / 'pixel'}", "--out", tmp_path / "o.nii.gz")
    assert rc == 0, o.err
    assert json.loads(o.out)["shape"][-2:] == [16, 16]
