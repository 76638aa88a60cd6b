"""`medrecon bench pipeline` reports every stage and ratio; `medrecon recon` streams and batches."""
import json
import sys
import weakref

import h5py
import numpy as np
import pytest
import torch

from medrecon.bench.pipeline import QUICK, peak_rss_mb, plan, write_input
from medrecon.cli.main import main
from medrecon.datasets.fastmri import FastMRIFile
from medrecon.pipeline import MaskSpec, reconstruct_file

STAGES = ("read", "maps", "reconstruct", "write")


def _bench(tmp_path, capsys, *extra):
    out = tmp_path / "res"
    assert main(["bench", "pipeline", "--quick", "--out", str(out), "--json", "--quiet",
                 *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((out / "bench_pipeline.json").read_text())["rows"] == result["rows"]
    table = (out / "bench_pipeline.md").read_text()
    assert "x as called" in table and "Command: `medrecon bench pipeline" in table
    return result, table


def test_quick_bench_reports_every_stage_and_ratio(tmp_path, capsys):
    result, table = _bench(tmp_path, capsys, "--methods", "zero-filled,cg-sense,l1-wavelet,ddnm",
                           "--steps", "1", "--no-memory")
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["zero-filled", "cg-sense", "l1-wavelet", "ddnm-1"]
    assert result["setup"]["kspace"] == [QUICK.coils, 2 * QUICK.size, QUICK.size]
    for label, r in rows.items():
        assert all(r[s] >= 0 for s in STAGES) and r["read"] > 0 and r["write"] > 0
        assert (r["maps"] > 0) == (label != "zero-filled")  # ESPIRiT only where maps are needed
        assert r["reconstruct"] > 0 and r["psnr"] > (15 if r["method"] != "ddnm" else 5)  # 1 step
        assert f"| {label}" in table
    for label in ("cg-sense", "l1-wavelet"):  # same problem as SigPy, timed against it
        sp = rows[label]["sigpy"]
        assert sp["maps"] > 0 and sp["reconstruct"] > 0
        assert all(sp[k] > 0 for k in ("x_maps", "x_reconstruct", "x_as_called"))
        assert abs(sp["psnr"] - rows[label]["psnr"]) < 1.0
    assert "sigpy" not in rows["zero-filled"] and "sigpy" not in rows["ddnm-1"]
    assert "peak_rss_mb" not in rows["cg-sense"]


@pytest.mark.slow
def test_quick_bench_every_method_with_memory(tmp_path, capsys):
    result, _ = _bench(tmp_path, capsys)
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["zero-filled", "cg-sense", "l1-wavelet", "spirit-cg", "ddnm-2", "dds-2"]
    floor = result["floor_rss_mb"]
    assert floor > 50 and all(r["peak_rss_mb"] >= floor * 0.9 for r in result["rows"])


def test_peak_rss_of_a_child():
    mb = peak_rss_mb([sys.executable, "-c", "x = bytearray(120 * 2**20); x[::4096] = b'1' * len(x[::4096])"])
    assert 120 <= mb < 400
    with pytest.raises(RuntimeError, match="boom"):
        peak_rss_mb([sys.executable, "-c", "raise SystemExit('boom')"])


def test_bench_option_errors(capsys):
    assert main(["bench", "pipeline", "--quick", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--quick", "--methods", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="CT method"):
        plan(["fbp"], [2])
    assert [p[0] for p in plan(["cg-sense", "dds"], [3, 7])] == ["cg-sense", "dds-3", "dds-7"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """Three fully sampled 4-coil slices, 64x32 k-space."""
    setup = type(QUICK)(coils=4, size=32, slices=3, acceleration=2, center_fraction=0.4)
    return write_input(tmp_path_factory.mktemp("vol"), setup)


MASK = MaskSpec(acceleration=2, center_fraction=0.4)


@pytest.mark.parametrize("method, options", [("zero-filled", {}), ("cg-sense", {}),
                                             ("l1-wavelet", {"max_iter": 5}),
                                             ("spirit-cg", {"max_iter": 5})])
def test_batch_size_2_gives_the_outputs_of_1(volume, tmp_path, method, options):
    preds = []
    for b in (1, 2):  # 3 slices: batches of 2 + 1
        out = tmp_path / f"b{b}.h5"
        rec = reconstruct_file(volume, method, mask=MASK, out=out, batch_size=b, **options)
        assert rec["slices"] == [0, 3]
        with h5py.File(out) as f:
            preds.append(f["reconstruction"][()])
    assert preds[0].shape == (3, 32, 32)
    np.testing.assert_allclose(preds[1], preds[0], rtol=0, atol=1e-5 * preds[0].max())


def test_reading_is_lazy_one_batch_in_memory(volume, monkeypatch):
    """Slices are read one batch at a time, each just before its reconstruction, and a batch's
    k-space is freed before the next one is read."""
    import medrecon.pipeline as pipeline

    events, alive = [], []
    read, recon = FastMRIFile.read_slice, pipeline.reconstruct

    def spy_read(self, i):
        events.append(("read", i))
        assert not [r for r in alive if r() is not None], "previous batch still in memory"
        return read(self, i)

    def spy_recon(k, *args, **kwargs):
        events.append(("recon", tuple(k.shape[:-3])))
        alive.append(weakref.ref(k))
        return recon(k, *args, **kwargs)

    monkeypatch.setattr(FastMRIFile, "read_slice", spy_read)
    monkeypatch.setattr(pipeline, "reconstruct", spy_recon)
    stages = {}
    reconstruct_file(volume, "cg-sense", mask=MASK, batch_size=2, timings=stages)
    assert events == [("read", 0), ("read", 1), ("recon", (2,)), ("read", 2), ("recon", (1,))]
    assert set(stages) == set(STAGES) and stages["maps"] > 0 and stages["read"] > 0
    events.clear()
    reconstruct_file(volume, "zero-filled", mask=MASK, slices="1:3")
    assert events == [("read", 1), ("recon", ()), ("read", 2), ("recon", ())]


def test_reconstruct_splits_maps_from_method_time():
    from medrecon.reconstruct import reconstruct

    k = torch.randn(4, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    res = reconstruct(k, torch.ones(1, 32, dtype=torch.bool), "cg-sense", max_iter=2)
    assert 0 < res.maps_seconds < res.seconds
    given = reconstruct(k, torch.ones(1, 32, dtype=torch.bool), "cg-sense", smaps=res.smaps,
                        max_iter=2)
    assert given.maps_seconds == 0


def test_diffusion_method_batches(volume, tmp_path):
    """DDNM takes 2 slices per call (its noise then differs from one by one: shapes, not values)."""
    out = tmp_path / "ddnm.h5"
    rec = reconstruct_file(volume, "ddnm", mask=MASK, out=out, batch_size=2, steps=1)
    with h5py.File(out) as f:
        pred = f["reconstruction"][()]
    assert rec["nfe"] >= 1 and pred.shape == (3, 32, 32) and np.isfinite(pred).all()
