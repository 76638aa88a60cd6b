"""`medrecon recon` on image inputs (DICOM MR series, NIfTI): retrospective k-space simulation,
geometry kept on output, sugar flags, progress hook, exit codes, CT dispatch."""
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medrecon.cli.main import main
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.geometry import lps_to_ras
from medrecon.datasets.nifti import read_nifti, write_nifti
from medrecon.image_inputs import simulate_kspace
from medrecon.physics.coils import sense_combine
from medrecon.physics.fft import ifft2c
from medrecon.physics.masks import make_mask
from medrecon.pipeline import MaskSpec, reconstruct_file
from medrecon.reconstructor import Reconstructor

S, H, W = 3, 32, 40
# oblique LPS grid: 2 mm slices along a tilted normal, 0.9 x 1.1 mm pixels
_C, _S = np.cos(0.3), np.sin(0.3)
ROW_COS, COL_COS = np.array([_C, _S, 0.0]), np.array([0.0, 0.0, -1.0])
AFFINE = np.eye(4)
AFFINE[:3, 0] = 2.0 * np.cross(ROW_COS, COL_COS)
AFFINE[:3, 1], AFFINE[:3, 2] = 0.9 * COL_COS, 1.1 * ROW_COS
AFFINE[:3, 3] = (-20.0, 15.0, 30.0)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "P123", "StudyInstanceUID": "1.2.3.4.5",
           "FrameOfReferenceUID": "1.2.3.4.6"}
ACS = ["--acceleration", "2", "--center-fraction", "0.2"]


def _phantom() -> np.ndarray:
    r, c = np.mgrid[:H, :W]
    vols = []
    for k in range(S):
        e = ((r - 15 - k) / 11.0) ** 2 + ((c - 20) / 15.0) ** 2 < 1
        d = ((r - 12) / 4.0) ** 2 + ((c - 16 + k) / 5.0) ** 2 < 1
        vols.append(800.0 * e + 400.0 * d + 50.0 * np.sin(c / 3.0) * e)
    return np.stack(vols).astype(np.float32)


def _dicom_series(path, **extra):
    write_dicom_series(_phantom(), path, affine=AFFINE, modality=extra.pop("modality", "MR"))
    for f in sorted(path.iterdir()):
        ds = pydicom.dcmread(f)
        for k, v in {**PATIENT, **extra}.items():
            setattr(ds, k, v)
        ds.save_as(f)
    return path


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    return _dicom_series(tmp_path_factory.mktemp("dcm") / "series",
                         InPlanePhaseEncodingDirection="ROW")


@pytest.fixture(scope="module")
def nifti_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nii") / "vol.nii.gz"
    ras = lps_to_ras(AFFINE)
    return write_nifti(_phantom(), path, ras)


def _json(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _zero_filled_reference(vol, mask, transpose=False):
    """|F^-1 M F x| by NumPy with fastMRI's centred orthonormal FFT."""
    x = vol.swapaxes(-1, -2) if transpose else vol
    ax = (-2, -1)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=ax), norm="ortho"), axes=ax)
    k = k * mask
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1))
    img = np.abs(img)
    return img.swapaxes(-1, -2) if transpose else img


def test_dicom_in_dicom_out_keeps_geometry_patient_and_metadata(dicom_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["recon", str(dicom_dir), "--method", "zero-filled", "--format", "dicom",
                 "--out", str(out), "--json", "--quiet", "--sample-seed", "4", "--keep-phi",
                 *ACS]) == 0
    (rec,) = _json(capsys)
    src, res = read_dicom_series(dicom_dir), read_dicom_series(out)
    assert rec["input_format"] == "dicom" and rec["shape"] == [S, H, W]
    assert rec["simulation"]["coils"] == 1 and rec["simulation"]["phase_encoding"] == "columns"
    assert set(rec["metrics"]) == {"nmse", "psnr", "ssim"} and rec["metrics"]["psnr"] > 15
    assert res.volume.shape == (S, H, W) and res.modality == "MR"
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-4)
    np.testing.assert_allclose(res.slice_positions, src.slice_positions, atol=1e-4)
    for k, v in PATIENT.items():
        assert str(res.header[k].value) == v
    assert res.series_uid != src.series_uid
    assert res.header.SeriesDescription == "medrecon zero-filled"
    params = json.loads(res.header.DerivationDescription.split(" ", 2)[2])
    assert params["seed"] == 4 and params["nfe"] == 0 and params["seconds"] >= 0
    cited = {str(pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID)
             for f in res.files}
    assert cited == {uid for _, uid, _ in src.source_refs}


@pytest.mark.parametrize("direction", ["ROW", "COL"])
def test_simulation_matches_numpy_and_follows_phase_encoding(tmp_path, capsys, direction):
    """Zero-filled from the simulated k-space equals |F^-1 M F x| by NumPy, with the mask along
    the DICOM phase-encoding direction (COL: rows undersampled)."""
    series = _dicom_series(tmp_path / "s", InPlanePhaseEncodingDirection=direction)
    out = tmp_path / "r.nii.gz"
    assert main(["recon", str(series), "--method", "zero-filled", "--out", str(out), "--json",
                 "--quiet", "--slices", "1:3", *ACS]) == 0
    (rec,) = _json(capsys)
    transpose = direction == "COL"
    assert rec["simulation"]["phase_encoding"] == ("rows" if transpose else "columns")
    vol = read_dicom_series(series).volume[1:3]
    shape = (W, H) if transpose else (H, W)
    mask = make_mask("equispaced_fraction", shape, 2, 0.2, seed=0).numpy()
    ref = _zero_filled_reference(vol, mask, transpose)
    got = read_nifti(out).volume
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * ref.max())
    wrong = _zero_filled_reference(vol, make_mask("equispaced_fraction", shape[::-1], 2, 0.2,
                                                  seed=0).numpy(), not transpose)
    assert np.abs(got - wrong).max() > 1e-2 * ref.max()  # the other axis gives another image


def test_dicom_in_nifti_and_h5_out_geometry(dicom_dir, tmp_path, capsys):
    src = read_dicom_series(dicom_dir)
    nii = tmp_path / "r.nii.gz"
    assert main(["recon", str(dicom_dir), "--method", "zero-filled", "--out", str(nii),
                 "--slices", "1:3", "--quiet", *ACS]) == 0
    nv = read_nifti(nii)
    assert nv.volume.shape == (2, H, W)
    sub = src.ras_affine.copy()
    sub[:3, 3] = src.slice_positions[1] * (-1, -1, 1)  # origin: slice 1's position, in RAS
    np.testing.assert_allclose(nv.affine, sub, atol=1e-4)
    side = nv.header["sidecar"]
    assert side["method"] == "zero-filled" and side["slices"] == [1, 3]
    assert side["input_format"] == "dicom" and {"nfe", "seconds", "seed", "options"} <= set(side)
    h5 = tmp_path / "r.h5"
    assert main(["recon", str(dicom_dir), "--method", "zero-filled", "--out", str(h5),
                 "--quiet", "--sample-seed", "2", *ACS]) == 0
    with h5py.File(h5) as f:
        assert f["reconstruction"].shape == (S, H, W)
        np.testing.assert_allclose(json.loads(f.attrs["affine_lps"]), src.affine, atol=1e-6)
        assert f.attrs["method"] == "zero-filled" and f.attrs["input_format"] == "dicom"
        assert f.attrs["nfe"] == 0 and f.attrs["seconds"] >= 0 and f.attrs["seed"] == 2
        assert json.loads(f.attrs["simulation"])["coils"] == 1


def test_nifti_in_nifti_out_same_affine(nifti_file, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    assert main(["recon", str(nifti_file), "--method", "cg-sense", "-o", "max_iter=3",
                 "--out", str(out), "--json", "--quiet", "--device", "cpu", *ACS]) == 0
    (rec,) = _json(capsys)
    a, b = nib.load(nifti_file), nib.load(out)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    assert b.shape == a.shape and rec["input_format"] == "nifti"
    assert rec["metrics"]["psnr"] > 15 and rec["options"]["max_iter"] == 3
    side = json.loads((tmp_path / "o.json").read_text())
    assert side["method"] == "cg-sense" and side["options"]["max_iter"] == 3


def test_nifti_folder_and_folder_outputs(nifti_file, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.nii.gz", "b.nii"):
        write_nifti(_phantom()[:2], d / name, lps_to_ras(AFFINE))
    (d / "notes.txt").write_text("not an image")
    assert main(["recon", str(d), "--method", "zero-filled", "--out", str(tmp_path / "o"),
                 "--format", "nifti", "--json", "--quiet", *ACS]) == 0
    recs = _json(capsys)
    assert [r["file"] for r in recs] == [str(d / "a.nii.gz"), str(d / "b.nii")]
    assert (tmp_path / "o" / "a.nii.gz").is_file() and (tmp_path / "o" / "b.nii.gz").is_file()
    assert main(["recon", str(d), "--method", "zero-filled", "--out", str(tmp_path / "h"),
                 "--quiet", *ACS]) == 0
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["a.h5", "b.h5"]
    write_nifti(_phantom()[:1], d / "a.nii", lps_to_ras(AFFINE))  # a.nii.gz and a.nii -> a.h5
    assert main(["recon", str(d), "--method", "zero-filled", "--out", str(tmp_path / "c"),
                 "--quiet", *ACS]) == 2
    assert "would both write" in capsys.readouterr().err


def test_simulated_coils_combine_to_the_image():
    x = torch.from_numpy(_phantom()[:2])
    for coils in (1, 4):
        k, smaps = simulate_kspace(x, coils)
        assert k.shape == (2, coils, H, W) and k.dtype == torch.complex64
        back = sense_combine(ifft2c(k), smaps)
        torch.testing.assert_close(back.real, x, rtol=0, atol=1e-3)
        assert back.imag.abs().max() < 1e-3
    k, _ = simulate_kspace(x, 2, "rows")
    assert k.shape == (2, 2, W, H)
    with pytest.raises(ValueError, match="coils"):
        simulate_kspace(x, 0)


def test_coils_flag_and_cg_sense_beats_zero_filled(nifti_file, capsys):
    args = [str(nifti_file), "--json", "--quiet", "--coils", "4", "--acceleration", "3",
            "--center-fraction", "0.1"]
    assert main(["recon", *args, "--method", "zero-filled"]) == 0
    assert main(["recon", *args, "--method", "cg-sense", "-o", "max_iter=20"]) == 0
    zf, cg = _json(capsys)
    assert zf["simulation"]["coils"] == 4
    assert cg["metrics"]["psnr"] > zf["metrics"]["psnr"] + 3


def test_exit_codes_and_bad_inputs(nifti_file, dicom_dir, tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"nope")
    four_d = write_nifti(np.zeros((2, 2, 16, 16), np.float32), tmp_path / "t.nii",
                         np.eye(4))
    ct = _dicom_series(tmp_path / "ct", modality="CT")
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, why in ((junk, "not a readable NIfTI"), (four_d, "4-D NIfTI"),
                     (tmp_path / "missing.nii", "no such file")):
        code = main(["recon", str(bad), str(nifti_file), "--method", "zero-filled", "--json",
                     "--quiet", *ACS])
        captured = capsys.readouterr()
        assert code == 1 and why in captured.err and str(bad) in captured.err
        assert len(captured.out.splitlines()) == 1  # the good input still ran
    # a CT series with an MRI method, an empty folder: usage errors, nothing runs
    for bad, why in ((ct, "not a CT method"), (empty, "no volume files")):
        code = main(["recon", str(bad), str(nifti_file), "--method", "zero-filled", "--json",
                     "--quiet", *ACS])
        captured = capsys.readouterr()
        assert code == 2 and why in captured.err and str(bad) in captured.err
        assert not captured.out
    usage = [["--coils", "0"], ["--steps", "0", "--method", "dds"], ["--method", "nope"],
             ["--method", "zero-filled", "--steps", "5"],
             ["--method", "dds", "--steps", "5", "-o", "steps=7"],
             ["--method", "l1-wavelet", "--cache", "3"],
             [str(dicom_dir), "--method", "zero-filled", "--out", str(tmp_path / "one.nii")]]
    for extra in usage:
        assert main(["recon", str(nifti_file), *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no option 'steps'" in err and "dds" in err and "contradicts" in err
    assert "has no option 'cache'" in err and "2 inputs were given" in err
    with pytest.raises(SystemExit) as exc:
        main(["recon", str(nifti_file), "--format", "png"])
    assert exc.value.code == 2


def test_no_overwrite(nifti_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.nii.gz"
    base = ["recon", str(nifti_file), "--method", "zero-filled", "--quiet", "--out", str(out),
            *ACS]
    assert main(base) == 0
    before = out.read_bytes()
    import medrecon.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("reconstructed although the output exists")
    monkeypatch.setattr(pipeline, "reconstruct", boom)
    assert main(base) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    out.unlink()  # the sidecar alone still blocks
    assert main(base) == 1 and not out.exists()
    monkeypatch.undo()
    (tmp_path / "o.json").unlink()
    assert main(base) == 0
    assert main([*base, "--overwrite"]) == 0


def test_ct_dispatch_through_the_registry(nifti_file, dicom_dir, tmp_path, monkeypatch, capsys):
    """The method's modality decides the path; -o is resolved once, here, and passed down as
    the options dataclass; a CT input with an MRI method is a usage error."""
    import medrecon.ct.inputs as ct_inputs
    import medrecon.pipeline as pipeline

    calls = []

    def fake(src, method, *args, options=None, **kwargs):
        calls.append((src, method, options))
        return {"output": None, "seconds": 0.0, "metrics": None}

    monkeypatch.setattr(pipeline, "reconstruct_file", fake)
    monkeypatch.setattr(ct_inputs, "is_ct_input", lambda p: Path(p).name == "ct_series")
    ct_dir = tmp_path / "ct_series"
    ct_dir.mkdir()
    (ct_dir / "1.dcm").write_bytes(b"")
    assert main(["recon", str(ct_dir), "--method", "fbp", "-o", "filter=hann", "--quiet"]) == 0
    src, method, opts = calls.pop()
    assert src == ct_dir and method == "fbp" and opts.filter == "hann" and opts.i0 == 1e4
    assert main(["recon", str(nifti_file), "--method", "fbp", "--steps", "5"]) == 2
    assert "no option 'steps'" in capsys.readouterr().err
    assert main(["recon", str(ct_dir), "--method", "zero-filled"]) == 2  # a CT input
    assert "not a CT method" in capsys.readouterr().err and not calls
    assert main(["recon", str(dicom_dir), "--method", "zero-filled", "--quiet", *ACS]) == 0
    assert calls.pop()[1] == "zero-filled"  # MRI inputs with an MRI method stay MRI

    def failing(*args, **kwargs):
        raise ValueError("bad scan")

    monkeypatch.setattr(pipeline, "reconstruct_file", failing)
    assert main(["recon", str(ct_dir), "--method", "fbp"]) == 1
    assert "bad scan" in capsys.readouterr().err


def test_reconstructor_on_image_inputs(dicom_dir, nifti_file, tmp_path):
    spec = MaskSpec("equispaced_fraction", 2, 0.2, 0)
    rec = Reconstructor("cg-sense", max_iter=3)
    a = rec.reconstruct_file(dicom_dir, spec, out=f"{tmp_path}/dcm/", seed=5, batch_size=2)
    b = reconstruct_file(dicom_dir, "cg-sense", spec, max_iter=3)
    assert a["metrics"]["psnr"] == pytest.approx(b["metrics"]["psnr"], rel=1e-4)
    s = read_dicom_series(tmp_path / "dcm")
    assert s.header.SeriesDescription == "medrecon cg-sense"
    params = json.loads(s.header.DerivationDescription.split(" ", 2)[2])
    assert params["options"]["max_iter"] == 3 and params["seed"] == 5 and "seconds" in params
    c = rec.reconstruct_file(nifti_file, spec, slices="2", coils=2, out=tmp_path / "n.nii")
    side = json.loads((tmp_path / "n.json").read_text())
    assert c["slices"] == [2, 3] and side["simulation"]["coils"] == 2
    assert side["method"] == "cg-sense" and side["options"]["max_iter"] == 3


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from medrecon.models.checkpoint import save_checkpoint
    from medrecon.models.networks import build_unet, preset
    from medrecon.models.schedules import VPSchedule, make_betas
    from medrecon.models.wrapper import DiffusionModel

    cfg = preset("tiny")
    model = DiffusionModel(build_unet(cfg, seed=0), VPSchedule(make_betas("linear", 1000)),
                           "eps", network_config=cfg)
    return str(save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model, cfg))


def test_steps_solver_mapping_and_step_progress(nifti_file, tiny_checkpoint, capsys):
    assert main(["recon", str(nifti_file), "--method", "ddnm", "--steps", "3", "--solver",
                 "ddim", "-o", f"checkpoint={tiny_checkpoint}", "--slices", "0", "--json",
                 "--quiet", *ACS]) == 0
    (rec,) = _json(capsys)
    assert rec["options"]["steps"] == 3 and rec["options"]["solver"] == "ddim"
    assert rec["nfe"] == 3 and np.isfinite(rec["metrics"]["psnr"])
    # the per-step bar: one tick per sampler step (reconstruct's callback), total over the volume
    spec = MaskSpec("equispaced_fraction", 2, 0.2, 0)
    rec = reconstruct_file(nifti_file, "ddnm", spec, slices="0:2", progress=True,
                           checkpoint=tiny_checkpoint, steps=2)
    err = capsys.readouterr().err
    assert rec["nfe"] == 2 and "sampling" in err and "/4 [" in err and "/2 [" in err
    rec = reconstruct_file(nifti_file, "ddnm", spec, slices="0:2", batch_size=2, progress=True,
                           checkpoint=tiny_checkpoint, steps=3)
    err = capsys.readouterr().err
    assert rec["nfe"] == 3 and "3/3 [" in err  # a batch of 2 slices: one sampling run
