"""`medrecon recon` never writes an input, never clobbers another run's output, and checks the
device, the output folders and the outputs' place before any reconstruction (issue 15)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import medrecon.pipeline as pipeline
from medrecon.cli.main import main
from medrecon.datasets import publish as pub
from medrecon.datasets.demo import make_demo_file
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.nifti import write_nifti

FAST = ["--method", "zero-filled", "--quiet", "--acceleration", "2", "--center-fraction", "0.2"]


@pytest.fixture
def h5_in(tmp_path):
    return make_demo_file(tmp_path / "in.h5", n_slices=1, coils=2, size=(32, 32))


def _volume() -> np.ndarray:
    r, c = np.mgrid[:16, :16]
    disc = ((r - 8) ** 2 + (c - 7) ** 2 < 30).astype(np.float32)
    return np.stack([100 * disc + k for k in range(2)])


@pytest.fixture
def nifti_in(tmp_path):
    return write_nifti(_volume(), tmp_path / "vol.nii.gz", np.eye(4), sidecar={"note": "input"})


@pytest.fixture
def dicom_in(tmp_path):
    return write_dicom_series(_volume(), tmp_path / "series", modality="MR")


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of an input (a file, a NIfTI with its sidecar, or a series folder)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    side = path.with_name(path.name.split(".")[0] + ".json")
    files += [side] if side.is_file() else []
    return {str(f): f.read_bytes() for f in files}


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("reconstructed although the run had to stop first")
    monkeypatch.setattr(pipeline, "reconstruct", boom)


def test_output_equal_to_an_input_is_refused(h5_in, nifti_in, dicom_in, tmp_path, capsys,
                                             monkeypatch):
    _no_work(monkeypatch)
    cases = [
        (h5_in, [str(h5_in)]),
        (nifti_in, [str(nifti_in)]),
        (nifti_in, [str(tmp_path / "vol.nii")]),  # its sidecar vol.json is the input's
        (dicom_in, [str(dicom_in), "--format", "dicom"]),
        (dicom_in, [str(dicom_in / "rec.h5")]),  # inside the input series folder
        (h5_in, [str(tmp_path), "--format", "h5"]),  # --out DIR makes DIR/in.h5: the input
        (dicom_in, [str(tmp_path / "link")]),
    ]
    (tmp_path / "link").symlink_to(dicom_in)
    for src, out in cases:
        before = _snapshot(src)
        assert main(["recon", str(src), *FAST, "--overwrite", "--out", *out]) == 2, out
        err = capsys.readouterr().err
        assert "inputs are never written" in err and len(err.splitlines()) == 1
        assert _snapshot(src) == before
    # a folder of inputs written over: `recon DIR --out DIR`
    before = _snapshot(h5_in)
    assert main(["recon", str(tmp_path), *FAST, "--overwrite", "--out", str(tmp_path)]) == 2
    assert "inputs are never written" in capsys.readouterr().err
    assert _snapshot(h5_in) == before


def test_output_written_by_another_run_meanwhile_is_kept(h5_in, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rec.h5"
    real = pipeline._fastmri_volume

    def racing(*a, **k):  # another process publishes the output during this reconstruction
        res = real(*a, **k)
        out.write_bytes(b"the other run's result")
        return res
    monkeypatch.setattr(pipeline, "_fastmri_volume", racing)
    assert main(["recon", str(h5_in), *FAST, "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"the other run's result"
    assert sorted(os.listdir(tmp_path)) == ["in.h5", "rec.h5"]  # no temp left behind


def test_dicom_overwrite_keeps_unrelated_files(h5_in, tmp_path, capsys):
    out = tmp_path / "dcm"
    base = ["recon", str(h5_in), *FAST, "--format", "dicom", "--out", str(out)]
    assert main(base) == 0
    (out / "notes.txt").write_text("mine")
    first = read_dicom_series(out).series_uid
    assert main(base) == 1 and "not empty" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    again = read_dicom_series(out)
    assert again.series_uid != first and len(again.files) == 1


def test_device_checked_before_any_work(h5_in, tmp_path, capsys, monkeypatch):
    import torch

    _no_work(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rec.h5"
    for device, why in (("cuda", "--device cuda:"), ("cuda:0", "--device cuda:0:"),
                        ("tpu7", "not a torch device")):
        assert main(["recon", str(h5_in), *FAST, "--device", device, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_output_folder_writability_checked_before_work(h5_in, tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = pub.os.open

    def deny(path, *a, **k):  # a read-only folder (chmod does not stop root)
        if Path(path).parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(pub.os, "open", deny)
    assert main(["recon", str(h5_in), *FAST, "--out", str(locked / "rec.h5")]) == 2
    err = capsys.readouterr().err
    assert "cannot write in the output folder" in err and err.count(str(locked)) == 1


def test_stale_temps_of_a_dead_run_are_removed(h5_in, tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    out = tmp_path / "out"
    out.mkdir()
    live = pub.temp_path(out / "rec.h5")
    stale = out / live.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    stale.write_bytes(b"half written")
    assert main(["recon", str(h5_in), *FAST, "--out", str(out / "rec.h5")]) == 0
    assert sorted(os.listdir(out)) == ["rec.h5"]


def test_non_utf8_input_name_and_outputs_record_only_the_name(h5_in, nifti_in, tmp_path,
                                                             capsys):
    odd = tmp_path / os.fsdecode(b"k\xffspace.h5")
    os.link(h5_in, odd)
    out = tmp_path / "out"
    assert main(["recon", str(odd), *FAST, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    text.encode("utf-8")  # printable: no lone surrogates reach the terminal
    assert "k\\xffspace.h5" in text
    with h5py.File(out / odd.name, "r") as f:
        assert f.attrs["file"] == "k\\xffspace.h5"
    assert main(["recon", str(nifti_in), *FAST, "--json", "--out", str(out / "v.nii.gz")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["file"] == str(nifti_in)  # the record on stdout keeps the path as given
    side = json.loads((out / "v.json").read_text())
    assert side["file"] == "vol.nii.gz" and str(tmp_path) not in json.dumps(side)


def test_error_names_the_input_once(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["recon", str(bad), *FAST]) == 1
    err = capsys.readouterr().err
    assert err.count(str(bad)) == 1


def test_flags_reach_the_writers_and_readers(nifti_in, tmp_path, monkeypatch):
    seen = {}
    real_read = pipeline._image_volume

    def spy(path, mask, slices, batch_size, coils, run, allow_irregular_spacing):
        seen["allow_irregular_spacing"] = allow_irregular_spacing
        return real_read(path, mask, slices, batch_size, coils, run, allow_irregular_spacing)
    monkeypatch.setattr(pipeline, "_image_volume", spy)
    real_write = pipeline.write_output

    def spy_write(*a, **k):
        seen["keep_phi"] = k.get("keep_phi")
        return real_write(*a, **k)
    monkeypatch.setattr(pipeline, "write_output", spy_write)
    out = tmp_path / "o"
    assert main(["recon", str(nifti_in), *FAST, "--out", str(out / "a.nii.gz")]) == 0
    assert seen == {"allow_irregular_spacing": False, "keep_phi": False}
    assert main(["recon", str(nifti_in), *FAST, "--out", str(out / "b.nii.gz"), "--keep-phi",
                 "--allow-irregular-spacing"]) == 0
    assert seen == {"allow_irregular_spacing": True, "keep_phi": True}
