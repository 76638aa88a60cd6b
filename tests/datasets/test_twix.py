"""Siemens twix in (`medrecon.datasets.twix`), on VE files built with twixtools' own writer
(``twixtools.write_twix``, ``twixtools.mdb.Mdb_local``) from a simulated volume: a noise-adjust
measurement, then the image measurement with 2x readout oversampling and PAT reference lines."""
import struct

import numpy as np
import pytest
import torch

twixtools = pytest.importorskip("twixtools")

from medrecon.cli.info import describe  # noqa: E402
from medrecon.cli.main import main  # noqa: E402
from medrecon.datasets.fastmri import center_crop, write_fastmri  # noqa: E402
from medrecon.datasets.simulate_mri import simulate_mri_volume  # noqa: E402
from medrecon.datasets.twix import open_twix  # noqa: E402
from medrecon.inputs import input_kind  # noqa: E402
from medrecon.physics.coils import rss  # noqa: E402
from medrecon.physics.fft import ifft2c  # noqa: E402
from medrecon.pipeline import reconstruct_file  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = 32
ACS = range(N // 2 - 5, N // 2 + 5)
MASK = np.isin(np.arange(N), list(ACS)) | (np.arange(N) % 3 == 0)


def protocol(base=N, lines=N, dims=2, trajectory=1, dwell=5000, fov=220.0):
    """A twix measurement header (``hdr_str``) as ``twixtools.twixprot.parse_twix_hdr`` reads it:
    ``[hdr_len][n_buffers]`` then ``name\\0 [len] text`` buffers; MeasYaps holds the ASCCONV."""
    yaps = "\n".join([
        "### ASCCONV BEGIN ###", 'tProtocolName\t = "medrecon_sim"',
        f"sKSpace.lBaseResolution\t = {base}", f"sKSpace.lPhaseEncodingLines\t = {lines}",
        f"sKSpace.ucDimension\t = {dims:#x}", f"sKSpace.ucTrajectory\t = {trajectory:#x}",
        "sKSpace.lPartitions\t = 8", f"sSliceArray.asSlice[0].dReadoutFOV\t = {fov}",
        f"sSliceArray.asSlice[0].dPhaseFOV\t = {fov}", "sSliceArray.asSlice[0].dThickness\t = 4",
        f"sRXSPEC.alDwellTime[0]\t = {dwell}", "### ASCCONV END ###", ""])
    bufs = [("Config", "<ParamString.\"tSequenceFileName\">  { \"%SiemensSeq%\\gre\" }\n"),
            ("MeasYaps", yaps)]
    body = b"".join(name.encode() + b"\0" + struct.pack("<I", len(text)) + text.encode()
                    for name, text in bufs)
    hdr = struct.pack("<II", 8 + len(body), len(bufs)) + body
    return np.frombuffer(hdr, dtype="<S1").copy()


def mdb(data, lin=0, sli=0, flags=(), center_lin=N // 2, **counters):
    m = twixtools.mdb.Mdb_local(np.ascontiguousarray(data, np.complex64))
    m.mdh.Counter.Lin, m.mdh.Counter.Sli = lin, sli
    for k, v in counters.items():
        setattr(m.mdh.Counter, k, v)
    m.mdh.CenterLin, m.mdh.CenterCol = center_lin, data.shape[-1] // 2
    for f in flags:
        m.add_flag(f)
    return m


def acqend():
    m = twixtools.mdb.Mdb_local()
    m.add_flag("ACQEND")
    return m


def write_twix(path, kspace, lines=None, calibration=(), noise=None, prot=None, edit=None):
    """``kspace [S, C, 2N, N]`` as a VE twix file with twixtools' writer."""
    S, C, Nx, Ny = kspace.shape
    lines = range(Ny) if lines is None else lines
    image = []
    for s in range(S):
        for q in sorted(set(lines) | set(calibration)):
            flags = ("PATREFSCAN",) if q in calibration and q not in lines else \
                ("PATREFSCAN", "PATREFANDIMASCAN") if q in calibration else ()
            image.append(mdb(kspace[s, :, :, q], q, s, flags))
            if edit is not None:
                edit(image[-1], s, q)
    scans = [{"hdr_str": prot if prot is not None else protocol(), "mdb": image + [acqend()]}]
    if noise is not None:
        nm = [mdb(n, i, flags=("NOISEADJSCAN",)) for i, n in enumerate(noise)]
        scans.insert(0, {"hdr_str": protocol(dwell=10000), "mdb": nm + [acqend()]})
    twixtools.write_twix(scans, str(path))
    return path


@pytest.fixture(scope="module")
def vol():
    return simulate_mri_volume(2, 4, (N, N), snr=None, seed=4)  # kspace [2, 4, 64, 32]


def test_image_scan_reads_like_the_fastmri_file(vol, tmp_path):
    raw = write_twix(tmp_path / "meas.dat", vol["kspace"],
                     lines=[q for q in range(N) if MASK[q] and q not in ACS], calibration=ACS)
    assert input_kind(raw) == "twix"
    with open_twix(raw) as f:
        assert f.shape == (2, 4, N, N) and f.recon_size == (N, N) and f.whitening is None
        np.testing.assert_array_equal(f.mask, MASK)
        k = torch.stack([f.read_slice(i)["kspace"] for i in range(2)])
    full = torch.from_numpy(vol["kspace"] * MASK)
    ref = center_crop(rss(ifft2c(full)), (N, N))
    assert float((center_crop(rss(ifft2c(k)), (N, N)) - ref).norm() / ref.norm()) < 1e-5
    fm = write_fastmri(tmp_path / "fm.h5", vol["kspace"] * MASK, header=vol["header"], mask=MASK)
    out = [reconstruct_file(src, "zero-filled", out=tmp_path / f"{src.stem}.npy.h5")
           for src in (raw, fm)]
    assert out[0]["input_format"] == "twix" and out[0]["mask"] == "file"
    import h5py

    imgs = [h5py.File(r["output"])["reconstruction"][()] for r in out]
    assert np.linalg.norm(imgs[0] - imgs[1]) / np.linalg.norm(imgs[1]) < 1e-3


def test_noise_adjust_scan_whitens(vol, tmp_path):
    rng = np.random.default_rng(1)
    mix = np.array([[1, 0, 0, 0], [0.9, 0.4, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1]], complex)
    noise = np.einsum("ij,njs->nis", mix, rng.normal(size=(64, 4, 64)) +
                      1j * rng.normal(size=(64, 4, 64)))
    k = np.einsum("ij,sjxy->sixy", mix, rng.normal(size=(1, 4, 64, 32)) +
                  1j * rng.normal(size=(1, 4, 64, 32))).astype(np.complex64)
    path = write_twix(tmp_path / "noise.dat", k, noise=noise)
    with open_twix(path) as f:
        assert f.describe()["noise"] == 64 and f.describe()["measurements"] == 2
        y = f.read_slice(0)["kspace"].numpy().reshape(4, -1)
    # dwell 5 us (image) / 10 us (noise) x 0.793: covariance 2 * 0.5 * 0.793 I
    cov = y @ y.conj().T / y.shape[1] / 0.793
    assert np.abs(cov - np.eye(4)).max() < 0.15
    assert abs(np.corrcoef(k[0].reshape(4, -1))[0, 1]) > 0.8


@pytest.mark.parametrize("case, expect", [
    ("radial", "radial trajectory is not supported"),
    ("3d", "3-D encoding (8 partitions)"),
    ("echo", "2 contrasts (echoes, Counter.Eco) (0, 1)"),
    ("average", "2 averages (Counter.Ave) (0, 1)"),
    ("repetition", "3 repetitions (Counter.Rep) (0, 1, 2)"),
])
def test_unsupported_data_is_a_clear_error(vol, tmp_path, capsys, case, expect):
    prot, edit = None, None
    if case == "radial":
        prot = protocol(trajectory=2)
    elif case == "3d":
        prot = protocol(dims=4)
    else:
        key, n = {"echo": ("Eco", 2), "average": ("Ave", 2), "repetition": ("Rep", 3)}[case]

        def edit(m, s, q):
            setattr(m.mdh.Counter, key, q % n)
    path = write_twix(tmp_path / f"{case}.dat", vol["kspace"][:1, :2], prot=prot, edit=edit)
    with pytest.raises(ValueError, match="not supported") as err:
        open_twix(path)
    assert expect in str(err.value)
    assert main(["recon", str(path), "--method", "zero-filled", "--quiet"]) == 1
    msg = capsys.readouterr().err
    assert expect in msg and "Traceback" not in msg and msg.count("\n") == 1
    info = describe(path)
    assert info["format"] == "twix" and not info["supported"] and expect in info["unsupported"]


def test_not_a_twix_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "junk.dat"
    bad.write_bytes(b"\x01\x02" * 300)
    with pytest.raises(ValueError, match="junk.dat"):
        open_twix(bad)
