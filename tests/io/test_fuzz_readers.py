"""Fuzzing the readers with corrupt, hostile and degenerate files (hypothesis, derandomized).

Every reader must give a *clear error* -- ``ValueError`` or ``OSError`` (``FileNotFoundError``)
whose message names the file -- or a correct result; never another exception type, a hang or a
runaway allocation.  Mutations of small valid files: truncation, bit flips, byte runs set to
0x00 or 0xFF (huge sizes in headers); plus structured cases: wrong dtype, wrong rank, headers
declaring far more data than the file holds.  The read cap (`medrecon.datasets.limits`) is
64 MiB here and each read's Python-tracked peak memory must stay under 128 MiB.
"""
from __future__ import annotations

import itertools
import signal
import tracemalloc
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.data import get_testdata_file

from medrecon.ct.inputs import read_ct_input, write_sinogram
from medrecon.datasets.dicom import read_dicom_series
from medrecon.datasets.fastmri import FastMRIFile, write_fastmri
from medrecon.datasets.nifti import read_nifti, write_nifti
from medrecon.image_inputs import INPUT_KINDS, input_kind

settings.register_profile("readers-fuzz", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
FUZZ = settings.get_profile("readers-fuzz")
CLEAR = (ValueError, OSError)  # the documented error types of every reader
_n = itertools.count()


class Blob(bytes):
    """File contents with a short repr (hypothesis prints the arguments of a failing case)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@pytest.fixture(autouse=True)
def _read_cap(monkeypatch):
    monkeypatch.setenv("MEDRECON_MAX_READ_BYTES", str(64 << 20))


def _fresh(root: Path, name: str, data: bytes) -> Path:
    d = root / f"case{next(_n)}"
    d.mkdir()
    p = d / name
    p.write_bytes(data)
    return p


def _outcome(read, path: Path) -> str:
    """``"ok"`` or ``"error"`` (clear); anything else fails the test."""
    def hang(*_):
        raise TimeoutError(f"reader hung on {path}")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    tracemalloc.start()
    try:
        read(path)
        return "ok"
    except TimeoutError:
        raise
    except CLEAR as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc!r}"
        return "error"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        assert peak < 128 << 20, f"reading {path} allocated {peak / 2**20:.0f} MiB"


def _mutate(data: bytes, draw, head: int = 1024) -> bytes:
    """One of: truncate, flip 1-8 bits, set a run of bytes to 0x00 or 0xFF (biased to the
    first ``head`` bytes, where the headers are)."""
    b = bytearray(data)
    n = len(b)
    pos = st.one_of(st.integers(0, min(n, head) - 1), st.integers(0, n - 1))
    kind = draw(st.sampled_from(["truncate", "flip", "zero", "ff"]))
    if kind == "truncate":
        return bytes(b[:draw(pos)])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(pos)
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    i, k = draw(pos), draw(st.integers(1, 8))
    b[i:i + k] = (b"\x00" if kind == "zero" else b"\xff") * len(b[i:i + k])
    return bytes(b)


# ------------------------------------------------------------------------------------ fastMRI
def _read_fastmri(path):
    with FastMRIFile(path) as f:
        s = f.read_slice(0)
        assert s["kspace"].dtype == torch.complex64 and s["kspace"].ndim in (2, 3)
        _ = f.attrs, f.recon_size


@pytest.fixture(scope="module")
def fastmri_bytes(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 2, 16, 16)) + 1j * rng.standard_normal((2, 2, 16, 16)))
    p = tmp_path_factory.mktemp("tpl") / "k.h5"
    write_fastmri(p, k.astype(np.complex64), mask=np.arange(16) % 2 == 0,
                  reconstruction_rss=np.ones((2, 8, 16), np.float32))
    return Blob(p.read_bytes())


@FUZZ
@given(data=st.data())
def test_fastmri_mutated(fastmri_bytes, tmp_path_factory, data):
    blob = _mutate(fastmri_bytes, data.draw, head=4096)
    _outcome(_read_fastmri, _fresh(tmp_path_factory.getbasetemp(), "k.h5", blob))


@FUZZ
@given(dtype=st.sampled_from(["f4", "i2", "u1", "c8", "c16", "S4", "?"]),
       shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
       mask=st.sampled_from(["none", "zeros", "short", "2d", "float"]))
def test_fastmri_structured(tmp_path_factory, dtype, shape, mask):
    p = tmp_path_factory.getbasetemp() / f"s{next(_n)}.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=np.ones(shape, dtype))
        W = shape[-1] if shape else 1
        if mask != "none":
            m = {"zeros": np.zeros(W, bool), "short": np.ones(W + 1, bool),
                 "2d": np.ones((2, W), bool), "float": np.full(W, 0.5)}[mask]
            f.create_dataset("mask", data=m)
    result = _outcome(_read_fastmri, p)
    good = dtype in ("c8", "c16") and len(shape) in (3, 4) and 0 not in shape
    assert result == ("ok" if good and mask in ("none", "float") else "error")


@pytest.mark.parametrize("layout", ["chunked", "contiguous-truncated"])
def test_fastmri_hostile_size(tmp_path, layout):
    p = tmp_path / "huge.h5"
    with h5py.File(p, "w") as f:
        if layout == "chunked":  # 10^12 elements in one slice declared, nothing written
            f.create_dataset("kspace", shape=(1, 1, 10**6, 10**6), dtype="c8",
                             chunks=(1, 1, 100, 100))
        else:
            f.create_dataset("kspace", data=np.ones((4, 2, 64, 64), np.complex64))
    if layout != "chunked":
        p.write_bytes(p.read_bytes()[:-20000])
    assert _outcome(_read_fastmri, p) == "error"


# -------------------------------------------------------------------------------------- DICOM
MR = Path(get_testdata_file("MR_small.dcm"))


@FUZZ
@given(data=st.data())
def test_dicom_mutated(tmp_path_factory, data):
    blob = _mutate(MR.read_bytes(), data.draw, head=1600)
    _outcome(read_dicom_series, _fresh(tmp_path_factory.getbasetemp(), "im.dcm", blob))


@FUZZ
@given(rows=st.sampled_from([0, 1, 63, 64, 65535]), cols=st.sampled_from([0, 64, 65535]),
       frames=st.sampled_from([None, 0, 1, 2, 2**31 - 1]),
       bits=st.sampled_from([1, 8, 16, 32, 64]), spp=st.sampled_from([1, 3]))
def test_dicom_hostile_header(tmp_path_factory, rows, cols, frames, bits, spp):
    ds = pydicom.dcmread(MR)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, cols, bits, spp
    if frames is not None:
        ds.NumberOfFrames = frames
    p = tmp_path_factory.getbasetemp() / f"h{next(_n)}.dcm"
    ds.save_as(p)
    good = (rows, cols, bits, spp) == (64, 64, 16, 1) and frames in (None, 0, 1)  # 0: one
    assert _outcome(read_dicom_series, p) == ("ok" if good else "error")


# -------------------------------------------------------------------------------------- NIfTI
@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("tpl")
    vol = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) + 1
    return {s: Blob(write_nifti(vol, d / f"v{s}", np.diag([1.0, 1, 2, 1])).read_bytes())
            for s in (".nii", ".nii.gz")}


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".nii", ".nii.gz"]))
def test_nifti_mutated(nifti_bytes, tmp_path_factory, data, suffix):
    blob = _mutate(nifti_bytes[suffix], data.draw, head=352)
    _outcome(read_nifti, _fresh(tmp_path_factory.getbasetemp(), "v" + suffix, blob))


@FUZZ
@given(version=st.sampled_from([1, 2]), dims=st.lists(st.integers(-1, 2**31), min_size=3,
                                                     max_size=3),
       gz=st.booleans())
def test_nifti_hostile_dims(tmp_path_factory, version, dims, gz):
    """A header whose dim[1..3] claim up to 2^31 voxels (NIfTI-1: int16, clipped to 32767)."""
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    d = tmp_path_factory.getbasetemp() / f"n{next(_n)}"
    d.mkdir()
    p = d / ("v.nii.gz" if gz else "v.nii")
    nib.save(cls(np.ones((4, 4, 2), np.float32), np.eye(4)), d / "v.nii")
    raw = bytearray((d / "v.nii").read_bytes())
    off, fmt = (40, "<i2") if version == 1 else (16, "<i8")
    lim = 32767 if version == 1 else 2**31
    for j, n in enumerate(dims):
        raw[off + (j + 1) * np.dtype(fmt).itemsize: off + (j + 2) * np.dtype(fmt).itemsize] = \
            np.array(min(n, lim), fmt).tobytes()
    if gz:
        import gzip
        (d / "v.nii").unlink()
        p.write_bytes(gzip.compress(bytes(raw)))
    else:
        p.write_bytes(bytes(raw))
    result = _outcome(read_nifti, p)
    if [min(n, lim) for n in dims] != [4, 4, 2]:
        assert result == "error" or int(np.prod([min(n, lim) for n in dims])) <= 32


# ---------------------------------------------------------------------------------- sinograms
def _read_sino(path):
    scan = read_ct_input(path, {})
    assert scan.sinogram.ndim == 3 and torch.isfinite(scan.sinogram).all()


@pytest.fixture(scope="module")
def sino_bytes(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("tpl")
    y = np.abs(np.random.default_rng(1).standard_normal((12, 16))).astype(np.float32) + 0.1
    np.save(d / "s.npy", y)
    write_sinogram(d / "s.h5", y, pixel_size=1.0)
    return {".npy": Blob((d / "s.npy").read_bytes()), ".h5": Blob((d / "s.h5").read_bytes())}


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".npy", ".h5"]))
def test_sinogram_mutated(sino_bytes, tmp_path_factory, data, suffix):
    blob = _mutate(sino_bytes[suffix], data.draw, head=4096 if suffix == ".h5" else 128)
    _outcome(_read_sino, _fresh(tmp_path_factory.getbasetemp(), "s" + suffix, blob))


@FUZZ
@given(dtype=st.sampled_from(["f4", "f8", "i2", "c8", "?", "S3"]),
       shape=st.lists(st.integers(0, 6), min_size=0, max_size=4), suffix=st.sampled_from(
           [".npy", ".h5"]), attrs=st.sampled_from([{}, {"image_size": 10**9},
                                                   {"pixel_size": -1.0}, {"angles": "abc"},
                                                   {"geometry": "fan"}]))
def test_sinogram_structured(tmp_path_factory, dtype, shape, suffix, attrs):
    p = tmp_path_factory.getbasetemp() / f"y{next(_n)}{suffix}"
    y = np.ones(shape, dtype)
    if suffix == ".npy":
        np.save(p, y)
        attrs = {}
    else:
        with h5py.File(p, "w") as f:
            f.create_dataset("sinogram", data=y)
            for k, v in attrs.items():
                f.attrs[k] = v
    good = (dtype in ("f4", "f8", "i2") and len(shape) in (2, 3) and min(shape) >= 1
            and shape[-1] >= 2 and not attrs)  # image_size = n_detectors >= 2
    assert _outcome(_read_sino, p) == ("ok" if good else "error")


def test_npy_header_claims_10e12(tmp_path):
    p = tmp_path / "huge.npy"
    with open(p, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
        fh.write(np.ones(64).tobytes())
    assert _outcome(_read_sino, p) == "error"


# ------------------------------------------------------------------------------ sniffing (info)
@FUZZ
@given(name=st.text(min_size=1, max_size=30).filter(lambda s: "/" not in s and "\0" not in s))
def test_input_kind_total(name):
    assert input_kind(Path(name)) in INPUT_KINDS
    assert input_kind(name + ".H5") == "fastmri" and input_kind(name + ".NII.GZ") == "nifti"


@FUZZ
@given(data=st.data(), which=st.sampled_from(["k.h5", "im.dcm", "v.nii", "s.h5", "x.bin"]))
def test_info_describe_mutated(fastmri_bytes, nifti_bytes, sino_bytes, tmp_path_factory, data,
                               which):
    """`medrecon info`'s sniffing + description on any mutated input, under any name."""
    from medrecon.cli.info import describe
    import json

    src = {"k.h5": fastmri_bytes, "im.dcm": Blob(MR.read_bytes()), "v.nii": nifti_bytes[".nii"],
           "s.h5": sino_bytes[".h5"], "x.bin": fastmri_bytes}[which]
    p = _fresh(tmp_path_factory.getbasetemp(), which, _mutate(src, data.draw, head=2048))
    _outcome(lambda q: json.dumps(describe(q), allow_nan=False), p)
