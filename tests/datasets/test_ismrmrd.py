"""ISMRMRD raw data in (`medrecon.datasets.ismrmrd`), on files written by the ``ismrmrd`` package's
own writer (``ismrmrd.Dataset``, ``ismrmrd.Acquisition``) from simulated volumes; the headers
medrecon writes parse with ``ismrmrd.xsd.CreateFromDocument``."""
import h5py
import numpy as np
import pytest
import torch

ismrmrd = pytest.importorskip("ismrmrd")

from medrecon.cli.info import describe  # noqa: E402
from medrecon.cli.main import main  # noqa: E402
from medrecon.datasets.fastmri import center_crop, make_ismrmrd_header, write_fastmri  # noqa: E402
from medrecon.datasets.ismrmrd import open_ismrmrd  # noqa: E402
from medrecon.datasets.raw_kspace import prewhitening_matrix  # noqa: E402
from medrecon.datasets.simulate_mri import simulate_mri_volume  # noqa: E402
from medrecon.inputs import find_inputs, input_kind  # noqa: E402
from medrecon.physics.coils import rss  # noqa: E402
from medrecon.physics.fft import ifft2c  # noqa: E402
from medrecon.pipeline import reconstruct_file  # noqa: E402
from medrecon.reconstruct import reconstruct  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = 32  # recon matrix N x N; the simulator's readout is oversampled 2x (64 samples)
ACS = range(N // 2 - 5, N // 2 + 5)
MASK = np.isin(np.arange(N), list(ACS)) | (np.arange(N) % 3 == 0)  # ~3x with 10 ACS lines


def write_ismrmrd(path, kspace, header, lines=None, calibration=(), noise=None, dwell=5.0,
                  noise_dwell=5.0, edit=None):
    """``kspace [S, C, Nx, Ny]`` as an ISMRMRD dataset: one acquisition per acquired line
    (``lines``), ``calibration`` lines flagged ACQ_IS_PARALLEL_CALIBRATION, ``noise`` readouts
    ``[n, C, Ns]`` first; ``edit(acq, slice, line)`` changes an acquisition before writing."""
    S, C, Nx, Ny = kspace.shape
    lines = range(Ny) if lines is None else lines
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as ds:
        ds.write_xml_header(header)
        for n in [] if noise is None else noise:
            a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(n, np.complex64))
            a.setFlag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            a.sample_time_us = noise_dwell
            ds.append_acquisition(a)
        for s in range(S):
            for line, calib in [(q, False) for q in lines] + [(q, True) for q in calibration]:
                a = ismrmrd.Acquisition.from_array(
                    np.ascontiguousarray(kspace[s, :, :, line], np.complex64))
                a.idx.kspace_encode_step_1, a.idx.slice = line, s
                a.center_sample, a.sample_time_us = Nx // 2, dwell
                if calib:
                    a.setFlag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
                if edit is not None:
                    edit(a, s, line)
                ds.append_acquisition(a)
    return path


@pytest.fixture(scope="module")
def vol():
    return simulate_mri_volume(2, 4, (N, N), snr=None, seed=3)  # kspace [2, 4, 64, 32]


def _rss(k):
    return center_crop(rss(ifft2c(k)), (N, N))


# -- headers other tools accept ----------------------------------------------------------------
def test_headers_we_write_follow_the_ismrmrd_schema(vol, tmp_path):
    from medrecon.datasets.demo import make_demo_volume

    demo = make_demo_volume(n_slices=1, coils=2, size=(16, 16))["header"]
    path = write_fastmri(tmp_path / "default.h5", np.zeros((1, 2, 16, 8), np.complex64))
    with h5py.File(path) as f:
        written = f["ismrmrd_header"][()]
    for xml in (vol["header"], demo, written, make_ismrmrd_header((640, 368, 1), (320, 320, 1))):
        hdr = ismrmrd.xsd.CreateFromDocument(xml)
        assert hdr.experimentalConditions.H1resonanceFrequency_Hz > 0
        assert hdr.encoding[0].trajectory.value == "cartesian"
    hdr = ismrmrd.xsd.CreateFromDocument(vol["header"])
    assert (hdr.encoding[0].encodedSpace.matrixSize.x, hdr.encoding[0].reconSpace.matrixSize.x) \
        == (2 * N, N)


# -- reading -----------------------------------------------------------------------------------
def test_fully_sampled_oversampled_scan_reads_to_the_fastmri_image(vol, tmp_path):
    path = write_ismrmrd(tmp_path / "full.h5", vol["kspace"], vol["header"])
    assert input_kind(path) == "ismrmrd" and find_inputs(tmp_path) == [path]
    with open_ismrmrd(path) as f:
        assert f.shape == (2, 4, N, N) and f.mask is None and f.recon_size == (N, N)
        assert f.header.recon_shape[:2] == (N, N) and f.whitening is None
        k = torch.stack([f.read_slice(i)["kspace"] for i in range(2)])
    # oversampling removed in the image domain: the kept FOV is unchanged
    ref = _rss(torch.from_numpy(vol["kspace"]))
    assert float((_rss(k) - ref).norm() / ref.norm()) < 1e-5
    np.testing.assert_allclose(ref.numpy(), vol["target"], rtol=1e-4, atol=1e-6)


def test_calibration_lines_count_and_imaging_lines_win(vol, tmp_path):
    imaging = [q for q in range(N) if MASK[q] and q not in ACS][::2]  # some ACS lines only calib.
    calib = list(ACS)
    both = [q for q in range(N) if MASK[q] and q not in imaging and q not in calib]

    def edit(a, s, line):  # a calibration-only copy of an imaging line holds other data
        if a.isFlagSet(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) and line in imaging:
            a.data[:] = 7.0

    path = write_ismrmrd(tmp_path / "calib.h5", vol["kspace"], vol["header"],
                         lines=imaging + both, calibration=calib + imaging[:1], edit=edit)
    with open_ismrmrd(path) as f:
        np.testing.assert_array_equal(f.mask, MASK)
        assert f.describe()["calibration_only"] == 2 * (len(calib) + 1)
        k = f.read_slice(0)["kspace"]
    full = open_ismrmrd(write_ismrmrd(tmp_path / "ref.h5", vol["kspace"], vol["header"]))
    with full:
        ref = full.read_slice(0)["kspace"] * torch.from_numpy(MASK)
    assert float((k - ref).abs().max()) < 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("oversampled", [False, True])
def test_same_image_as_the_equivalent_fastmri_file(vol, tmp_path, oversampled):
    """Through `reconstruct_file`: ISMRMRD (calibration lines flagged) and a fastMRI file with the
    same k-space and mask give the same image.  Without readout oversampling the k-space is
    identical (CG-SENSE, ESPIRiT maps); with it, zero-filled RSS is identical, and CG-SENSE with
    the same maps agrees row by row (the mask is along the phase axis)."""
    k = vol["kspace"]
    if not oversampled:  # the equivalent scan encoded at the recon matrix
        with open_ismrmrd(write_ismrmrd(tmp_path / "os.h5", k, vol["header"])) as f:
            k = torch.stack([f.read_slice(i)["kspace"] for i in range(2)]).numpy()
    header = vol["header"] if oversampled else make_ismrmrd_header((N, N, 1), (N, N, 1))
    raw = write_ismrmrd(tmp_path / "raw.h5", k, header,
                        lines=[q for q in range(N) if MASK[q] and q not in ACS], calibration=ACS)
    fm = write_fastmri(tmp_path / "fm.h5", k * MASK, header=header, mask=MASK)
    methods = ["zero-filled"] if oversampled else ["zero-filled", "cg-sense"]
    for method in methods:
        out = []
        for src in (raw, fm):
            rec = reconstruct_file(src, method, out=tmp_path / f"{method}-{src.stem}.h5")
            assert rec["mask"] == "file" and rec["metrics"] is None
            assert rec["input_format"] == ("ismrmrd" if src == raw else "fastmri")
            with h5py.File(rec["output"]) as f:
                out.append(f["reconstruction"][()])
        assert np.linalg.norm(out[0] - out[1]) / np.linalg.norm(out[1]) < 1e-3, method
    if oversampled:  # CG-SENSE with the simulator's maps, on the two readout FOVs
        with open_ismrmrd(raw) as f:
            kr, m = f.read_slice(0)["kspace"], torch.from_numpy(f.mask).view(1, N)
        maps = torch.from_numpy(vol["maps"])
        a = reconstruct(kr, m, "cg-sense", smaps=center_crop(maps, (N, N)).contiguous()).image
        b = center_crop(reconstruct(torch.from_numpy(k[0] * MASK), m, "cg-sense",
                                    smaps=maps).image, (N, N))
        assert float((a - b).norm() / b.norm()) < 1e-3


def test_noise_prewhitening_makes_correlated_noise_white(tmp_path):
    rng = np.random.default_rng(0)
    C, Ns = 4, 64
    mix = np.tril(rng.normal(size=(C, C)) + 1j * rng.normal(size=(C, C))) + 2 * np.eye(C)

    def noise(*shape):  # correlated complex noise, covariance ~ 2 mix mix^H
        w = rng.normal(size=(*shape[:-2], C, shape[-1])) + 1j * rng.normal(size=(*shape[:-2], C, shape[-1]))
        return np.einsum("ij,...jn->...in", mix, w).astype(np.complex64)

    scan = noise(200, C, Ns)                        # 200 noise readouts [n, C, Ns]
    samples = np.concatenate(list(scan), axis=1).astype(np.complex128)  # [C, 200 Ns]
    W = prewhitening_matrix(samples, 0.5)
    cov = samples @ samples.conj().T / (samples.shape[1] - 1)
    np.testing.assert_allclose(W @ cov @ W.conj().T, np.eye(C), atol=1e-10)  # 2 s I, s = 0.5
    k = noise(32, C, Ns).transpose(1, 2, 0)[None]   # pure-noise "image" scan [1, C, Ns, 32]
    header = make_ismrmrd_header((Ns, 32, 1), (Ns, 32, 1))
    path = write_ismrmrd(tmp_path / "noise.h5", k, header, noise=scan, dwell=2.5, noise_dwell=5.0)
    with open_ismrmrd(path) as f:
        assert f.whitening is not None and f.describe()["noise"] == 200
        assert f.num_slices == 1  # noise readouts are not image data
        y = f.read_slice(0)["kspace"].numpy().reshape(C, -1)
    before = k[0].reshape(C, -1)
    corr = np.corrcoef(before)
    assert np.abs(corr - np.eye(C)).max() > 0.3     # strongly correlated before
    cov_y = y @ y.conj().T / y.shape[1]
    assert np.abs(cov_y - np.eye(C)).max() < 0.15   # white (and unit) after: 2048 samples


# -- what is not supported: one clear line, never a traceback -----------------------------------
def _unsupported(vol, tmp_path, name, header=None, edit=None):
    h = header or vol["header"]
    return write_ismrmrd(tmp_path / f"{name}.h5", vol["kspace"][:1, :2], h, edit=edit)


@pytest.mark.parametrize("case, expect", [
    ("radial", "radial trajectory is not supported"),
    ("trajectory", "trajectory_dimensions=2"),
    ("3d", "3-D encoding (kspace_encode_step_2: 4 partitions)"),
    ("contrast", "2 contrasts (idx.contrast) (0, 1)"),
    ("average", "3 averages (idx.average) (0, 1, 2)"),
    ("repetition", "2 repetitions (idx.repetition) (0, 1)"),
])
def test_unsupported_data_is_a_clear_error(vol, tmp_path, capsys, case, expect):
    header, edit = None, None
    if case == "radial":
        header = vol["header"].replace("<trajectory>cartesian<", "<trajectory>radial<")
    elif case == "3d":
        header = vol["header"].replace("<z>1</z></matrixSize>", "<z>4</z></matrixSize>", 1)

        def edit(a, s, line):
            a.idx.kspace_encode_step_2 = line % 4
    elif case == "trajectory":
        def edit(a, s, line):
            a.resize(a.number_of_samples, a.active_channels, 2)
    else:
        n = {"contrast": 2, "average": 3, "repetition": 2}[case]

        def edit(a, s, line):
            setattr(a.idx, case, line % n)
    path = _unsupported(vol, tmp_path, case, header, edit)
    with pytest.raises(ValueError) as err:
        open_ismrmrd(path)
    assert expect in str(err.value) and str(path) in str(err.value)
    assert main(["recon", str(path), "--method", "zero-filled", "--quiet"]) == 1  # input failed
    msg = capsys.readouterr().err
    assert expect in msg and "Traceback" not in msg and msg.count("\n") == 1
    info = describe(path)  # `medrecon info` still describes the file, and says why
    assert info["format"] == "ismrmrd" and not info["supported"] and expect in info["unsupported"]


def test_info_shows_the_header_summary(vol, tmp_path, capsys):
    path = write_ismrmrd(tmp_path / "info.h5", vol["kspace"], vol["header"], lines=np.flatnonzero(MASK))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert ": ismrmrd" in text and "H1_frequency_Hz" in text
    info = describe(path)
    assert info["supported"] and info["kspace_shape"] == [2, 4, N, N]
    assert info["encodings"][0]["encoded_matrix"] == [2 * N, N, 1]
    assert info["acceleration"] == round(N / MASK.sum(), 3)
