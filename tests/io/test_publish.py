"""`medrecon.datasets.publish`: no-clobber publishing against other processes, overwrite, image +
sidecar pairs, stale temps, input/output overlap; and the writers routed through it."""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from medrecon.datasets import publish as pub
from medrecon.datasets.dicom import read_dicom_series, write_dicom_series
from medrecon.datasets.fastmri import atomic_h5, write_reconstruction
from medrecon.datasets.nifti import read_nifti, sidecar_path, write_nifti
from medrecon.datasets.publish import (InputOverlapError, OutputExistsError, publish,
                                       publish_pair, refuse_input_overlap, remove_stale_temps,
                                       temp_path)

ROUNDS = 4


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _racer(barrier, queue, dest: str, tag: str, pair: bool) -> None:
    """One competing writer: temp file(s) ready, wait for the others, publish once."""
    d = Path(dest)
    img = _write(temp_path(d), tag)
    side = _write(temp_path(sidecar_path(d)), tag) if pair else None
    barrier.wait()
    try:
        if pair:
            publish_pair(img, d, side, sidecar_path(d))
        else:
            publish(img, d)
        queue.put((tag, "won"))
    except OutputExistsError:
        queue.put((tag, "exists"))
    except BaseException as exc:  # reported, so the test fails with the reason
        queue.put((tag, repr(exc)))


@pytest.mark.parametrize("pair", [False, True], ids=["file", "image+sidecar"])
def test_concurrent_writers_exactly_one_wins(tmp_path, pair):
    ctx = mp.get_context("fork")
    for r in range(ROUNDS):
        dest = tmp_path / f"r{r}.nii.gz"
        barrier, queue = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_racer, args=(barrier, queue, str(dest), f"w{i}", pair))
                 for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        results = dict(queue.get(timeout=5) for _ in procs)
        winners = [t for t, res in results.items() if res == "won"]
        assert len(winners) == 1, results
        assert sorted(results.values()) == ["exists", "exists", "won"], results
        assert dest.read_text() == winners[0]
        if pair:  # the winner's image sits with the winner's sidecar
            assert sidecar_path(dest).read_text() == winners[0]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(pub.TEMP_PREFIX)]


def test_publish_overwrite_and_refusals(tmp_path):
    dest = _write(tmp_path / "out.h5", "old")
    with pytest.raises(OutputExistsError, match="out.h5 exists"):
        publish(_write(temp_path(dest), "new"), dest)
    assert dest.read_text() == "old" and _visible(tmp_path) == ["out.h5"]  # temp removed
    publish(_write(temp_path(dest), "new"), dest, overwrite=True)
    assert dest.read_text() == "new"
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        publish(_write(temp_path(tmp_path / "dir.h5"), "x"), tmp_path / "dir.h5", overwrite=True)
    # a symlink at the destination is replaced, its target never written through
    target = _write(tmp_path / "target.txt", "keep")
    (tmp_path / "link.h5").symlink_to(target)
    with pytest.raises(OutputExistsError):
        publish(_write(temp_path(tmp_path / "link.h5"), "x"), tmp_path / "link.h5")
    publish(_write(temp_path(tmp_path / "link.h5"), "x"), tmp_path / "link.h5", overwrite=True)
    assert target.read_text() == "keep" and not (tmp_path / "link.h5").is_symlink()
    assert (tmp_path / "link.h5").read_text() == "x"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(pub.TEMP_PREFIX)]


def test_publish_cache_keeps_the_first_writers_file(tmp_path):
    """A prepared cache (every writer makes the same file): the first publish wins, a later one keeps
    it and leaves no temp; the temp names are per process, so concurrent writers never share one."""
    dest = tmp_path / "images.pt"
    assert pub.publish_cache(dest, lambda t: Path(t).write_text("first")) == dest
    assert pub.publish_cache(dest, lambda t: Path(t).write_text("second")) == dest
    assert dest.read_text() == "first" and os.listdir(tmp_path) == ["images.pt"]


def test_pair_rollback_and_overwrite_restore(tmp_path):
    img, side = tmp_path / "a.nii", tmp_path / "a.json"
    _write(img, "foreign image")  # the image exists without a sidecar: the pair must not land
    with pytest.raises(OutputExistsError, match="a.nii exists"):
        publish_pair(_write(temp_path(img), "i"), img, _write(temp_path(side), "s"), side)
    assert _visible(tmp_path) == ["a.nii"] and img.read_text() == "foreign image"
    _write(side, "old side")
    publish_pair(_write(temp_path(img), "i2"), img, _write(temp_path(side), "s2"), side,
                 overwrite=True)
    assert (img.read_text(), side.read_text()) == ("i2", "s2")
    # overwrite failing at the image puts the previous sidecar back
    bad_img = tmp_path / "b.nii"
    bad_img.mkdir()
    bad_side = _write(tmp_path / "b.json", "old b")
    with pytest.raises(IsADirectoryError):
        publish_pair(_write(temp_path(bad_img), "i"), bad_img, _write(temp_path(bad_side), "s"),
                     bad_side, overwrite=True)
    assert bad_side.read_text() == "old b"
    assert _visible(tmp_path) == ["a.json", "a.nii", "b.json", "b.nii"]


@pytest.mark.parametrize("mode", ["renameat2", "claim"])
def test_no_hard_links_fallbacks_still_refuse(tmp_path, monkeypatch, mode):
    def no_link(*a, **k):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(pub.os, "link", no_link)
    if mode == "claim":
        monkeypatch.setattr(pub, "_renameat2_noreplace", lambda src, dst: False)
    dest = tmp_path / "x.h5"
    publish(_write(temp_path(dest), "first"), dest)
    with pytest.raises(OutputExistsError):
        publish(_write(temp_path(dest), "second"), dest)
    img, side = tmp_path / "p.nii", tmp_path / "p.json"
    _write(img, "foreign")
    with pytest.raises(OutputExistsError):
        publish_pair(_write(temp_path(img), "i"), img, _write(temp_path(side), "s"), side)
    assert dest.read_text() == "first" and _visible(tmp_path) == ["p.nii", "x.h5"]


def test_temp_names_keep_the_extension_and_fit(tmp_path):
    t = temp_path(tmp_path / "scan.nii.gz")
    assert t.name.startswith(pub.TEMP_PREFIX) and t.name.endswith("scan.nii.gz")
    assert f"-{os.getpid()}-" in t.name and t != temp_path(tmp_path / "scan.nii.gz")
    long = temp_path(tmp_path / ("x" * 250 + ".nii.gz"))
    assert long.name.endswith(".nii.gz") and len(os.fsencode(long.name)) < 255


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    mine = _write(temp_path(tmp_path / "live.h5"), "x")
    stale_file = _write(tmp_path / mine.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"), "x")
    stale_dir = tmp_path / stale_file.name.replace("live.h5", "series")
    stale_dir.mkdir()
    _write(stale_dir / "IM00001.dcm", "x")
    other_host = _write(tmp_path / f"{pub.TEMP_PREFIX}ffffffff-{dead_pid}-abc-o.h5", "x")
    unrelated = _write(tmp_path / ".hidden.h5.tmp", "x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert mine.exists() and other_host.exists() and unrelated.exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_refuse_input_overlap(tmp_path):
    inp = _write(tmp_path / "in.h5", "k")
    series = tmp_path / "series"
    series.mkdir()
    (tmp_path / "alias.h5").symlink_to(inp)
    os.link(inp, tmp_path / "hard.h5")
    cases = {
        "is the input": [inp],
        "is the input ": [tmp_path / "alias.h5"],
        "is the input  ": [tmp_path / "hard.h5"],
        "inside the input series folder": [series / "out.h5"],
        "holding the input": [tmp_path],
    }
    for why, outputs in cases.items():
        with pytest.raises(InputOverlapError, match=why.strip()):
            refuse_input_overlap(outputs, [inp, series])
    with pytest.raises(InputOverlapError, match="is the input folder"):
        refuse_input_overlap([tmp_path / "x.nii.gz"], [inp], folders=[tmp_path],
                             out_dirs=[tmp_path])
    with pytest.raises(InputOverlapError, match="is the input folder"):  # an input series folder
        refuse_input_overlap([], [series], out_dirs=[series])
    assert issubclass(InputOverlapError, ValueError)
    # allowed: a sibling, and a subfolder of a folder whose files are the inputs
    refuse_input_overlap([tmp_path / "rec.h5", tmp_path / "recon" / "in.h5"], [inp, series],
                         folders=[tmp_path], out_dirs=[tmp_path / "recon"])


def test_writers_no_clobber_and_clean_temps(tmp_path):
    rec = np.ones((2, 8, 8), np.float32)
    out = write_reconstruction(tmp_path / "r.h5", rec)
    with pytest.raises(OutputExistsError):
        write_reconstruction(out, 2 * rec)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_h5(tmp_path / "fail.h5") as f:
            f.create_dataset("x", data=rec)
            raise RuntimeError("boom")
    name = os.fsdecode(b"k\xffspace.h5")  # a non-UTF-8 file name
    write_reconstruction(tmp_path / name, rec)
    with h5py.File(tmp_path / name, "r") as f:
        np.testing.assert_array_equal(f["reconstruction"][()], rec)
    assert _visible(tmp_path) == sorted(["r.h5", name])
    nii = write_nifti(rec, tmp_path / "v.nii.gz", np.eye(4), sidecar={"method": "m"})
    assert read_nifti(nii).header["sidecar"] == {"method": "m"}
    with pytest.raises(OutputExistsError):
        write_nifti(rec, nii, np.eye(4), sidecar={"method": "other"})
    assert read_nifti(nii).header["sidecar"] == {"method": "m"}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_dicom_overwrite_replaces_only_the_series(tmp_path):
    out = write_dicom_series(np.ones((3, 8, 8)), tmp_path / "s")
    _write(out / "README.txt", "notes")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_dicom_series(np.ones((2, 8, 8)), out)
    write_dicom_series(2 * np.ones((2, 8, 8)), out, overwrite=True)  # fewer slices than before
    assert _visible(out) == ["IM00001.dcm", "IM00002.dcm", "README.txt"]
    assert (out / "README.txt").read_text() == "notes"
    s = read_dicom_series(out)
    assert s.volume.shape == (2, 8, 8) and np.allclose(s.volume, 2)
    # a folder holding a series medrecon did not write is never written into
    foreign = tmp_path / "foreign"
    write_dicom_series(np.ones((1, 8, 8)), foreign)
    import pydicom
    ds = pydicom.dcmread(foreign / "IM00001.dcm")
    ds.Manufacturer = "ACME"
    ds.save_as(foreign / "scanner.dcm")
    (foreign / "IM00001.dcm").unlink()
    with pytest.raises(FileExistsError, match="did not write"):
        write_dicom_series(np.ones((1, 8, 8)), foreign, overwrite=True)
    assert _visible(foreign) == ["scanner.dcm"]
    with pytest.raises(FileExistsError, match="is a file"):
        write_dicom_series(np.ones((1, 8, 8)), tmp_path / "s" / "README.txt", overwrite=True)
