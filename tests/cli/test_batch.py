"""`medrecon batch` / `medrecon.batch.run_batch`: a local Ray cluster on CPU and the in-process
fallback, on tiny demo volumes (zero-filled: the cost is Ray's, not the reconstruction's)."""
import json
import sys
import textwrap

import h5py
import numpy as np
import pytest

from medrecon.batch import FAILURES_FILE, STATE_DIR, run_batch
from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_file
from medrecon.pipeline import MaskSpec, reconstruct_file

MASK = MaskSpec(acceleration=2, center_fraction=0.2)
MASK_ARGS = ["--acceleration", "2", "--center-fraction", "0.2"]

# A method registered by a plugin file: it kills its own worker process once (while the marker
# file exists, removing it first), then behaves as zero-filled.
CRASH_PLUGIN = textwrap.dedent('''
    import os
    import signal
    from dataclasses import dataclass
    from pathlib import Path

    from medrecon.baselines import zero_filled
    from medrecon.registry import register_method


    @dataclass
    class CrashOnceOptions:
        marker: str = ""


    @register_method("test-crash-once", CrashOnceOptions, "test only: kill the worker once")
    def crash_once(kspace, mask, smaps, opts, generator):
        # unlink is the atomic claim: two volumes run at once, and only the one whose unlink
        # succeeds kills its worker (an exists() check first would race)
        if opts.marker:
            try:
                Path(opts.marker).unlink()
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return zero_filled(kspace, mask, smaps, opts, generator)
''')


@pytest.fixture(scope="module")
def ray_session():
    """One local 2-CPU Ray instance for the module (run_batch joins it, never shuts it down)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    for i in range(3):
        make_demo_file(d / f"vol{i}.h5", n_slices=1, coils=2, size=(32, 32), seed=i)
    return d


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The crash plugin file; its method is removed from the registry afterwards so that it does
    not show up in other tests' method listings."""
    from medrecon import registry

    path = tmp_path_factory.mktemp("plugin") / "crash_plugin.py"
    path.write_text(CRASH_PLUGIN)
    yield path
    registry._REGISTRY.pop("test-crash-once", None)


def _recon(path):
    with h5py.File(path) as f:
        return f["reconstruction"][()], dict(f.attrs)


def test_all_done_then_resume_skips(ray_session, volumes, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["batch", str(volumes), "--out", str(out), "--method", "zero-filled", *MASK_ARGS]
    argv = [*base, "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["done"], first["skipped"], first["failed"], first["retried"]) == (3, 0, 0, 0)
    assert first["executor"] == "ray local" and first["failures_file"] is None
    for v in first["volumes"]:
        assert v["status"] == "done" and v["attempts"] == 1 and v["record"]["nfe"] == 0
    # same image and metadata as `reconstruct_file` run here
    ref = reconstruct_file(volumes / "vol1.h5", "zero-filled", MASK, out=tmp_path / "ref.h5")
    got, attrs = _recon(out / "vol1.h5")
    np.testing.assert_array_equal(got, _recon(tmp_path / "ref.h5")[0])
    assert attrs["method"] == "zero-filled"
    assert first["volumes"][1]["record"]["metrics"] == ref["metrics"]

    # resume: nothing is redone, outputs untouched; a lost output (and marker) is redone alone
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    (out / "vol2.h5").unlink()
    (out / STATE_DIR / "done" / "vol2.h5.json").unlink()
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert [v["status"] for v in again["volumes"]] == ["skipped", "skipped", "done"]
    assert again["volumes"][0]["record"] == first["volumes"][0]["record"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")
            if p.name != "vol2.h5"} == {k: v for k, v in stamps.items() if k != "vol2.h5"}
    # human summary, nothing to run: Ray is not even needed
    assert main(base) == 0
    text = capsys.readouterr().out
    assert "0 done, 3 skipped, 0 failed" in text and "nothing to run" in text


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


def test_in_process_fallback_gives_the_same_outputs(ray_session, volumes, tmp_path,
                                                    monkeypatch):
    on_ray = run_batch(volumes, tmp_path / "ray", "zero-filled", MASK)
    monkeypatch.setitem(sys.modules, "ray", None)
    local = run_batch(volumes, tmp_path / "local", "zero-filled", MASK)
    assert (on_ray.executor, local.executor) == ("ray local", "in-process")
    assert [r.status for r in local.results] == ["done"] * 3
    assert [r.attempts for r in local.results] == [1, 1, 1]
    for a, b in zip(on_ray.results, local.results):
        (img_a, attrs_a), (img_b, attrs_b) = _recon(a.output), _recon(b.output)
        np.testing.assert_array_equal(img_a, img_b)
        assert {k: v for k, v in attrs_a.items() if k != "seconds"} == \
            {k: v for k, v in attrs_b.items() if k != "seconds"}
        assert a.record["metrics"] == b.record["metrics"]
    again = run_batch(volumes, tmp_path / "local", "zero-filled", MASK)
    assert [r.status for r in again.results] == ["skipped"] * 3


def test_corrupt_input_is_recorded_and_the_rest_finish(ray_session, volumes, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("vol0.h5", "vol1.h5"):
        (inputs / name).write_bytes((volumes / name).read_bytes())
    (inputs / "broken.h5").write_bytes(b"not an HDF5 file" * 10)
    out = tmp_path / "out"
    code = main(["batch", str(inputs), "--out", str(out), "--method", "zero-filled",
                 *MASK_ARGS])
    cap = capsys.readouterr()
    assert code == 1
    assert "2 done, 0 skipped, 1 failed" in cap.out and "broken.h5: FAILED" in cap.out
    assert FAILURES_FILE in cap.err
    (line,) = (out / FAILURES_FILE).read_text().splitlines()
    rec = json.loads(line)
    assert rec["file"] == str(inputs / "broken.h5") and rec["attempts"] == 1
    assert rec["error"] and "Traceback" in rec["traceback"]
    assert sorted(p.name for p in out.glob("*.h5")) == ["vol0.h5", "vol1.h5"]
    assert not (out / "broken.h5").exists()


def test_unschedulable_tasks_are_refused(ray_session, volumes, tmp_path):
    for kw, what in (({"num_gpus": 1}, "1 GPUs"), ({"num_cpus": 3}, "3 CPUs")):
        with pytest.raises(ValueError, match=f"asks for {what} but the local Ray instance"):
            run_batch(volumes, tmp_path / "out", "zero-filled", MASK, **kw)
    with pytest.raises(ValueError, match="needs num_gpus > 0"):
        run_batch(volumes, tmp_path / "out", "zero-filled", MASK, device="cuda")


def test_killed_worker_is_retried_and_the_run_completes(ray_session, volumes, plugin,
                                                         tmp_path):
    marker = tmp_path / "crash-once"
    marker.touch()
    out = tmp_path / "out"
    s = run_batch([volumes / "vol0.h5", volumes / "vol1.h5"], out, "test-crash-once", MASK,
                  options={"marker": str(marker)}, plugins=[str(plugin)], max_retries=2)
    assert not marker.exists()  # the crash happened (once)
    assert (len(s.done), len(s.failed)) == (2, 0)
    (retried,) = s.retried
    assert retried.attempts == 2 and s.to_dict()["retried"] == 1
    # the retry's output equals the plain zero-filled reconstruction
    ref = reconstruct_file(retried.file, "zero-filled", MASK, out=tmp_path / "ref.h5")
    np.testing.assert_array_equal(_recon(retried.output)[0], _recon(tmp_path / "ref.h5")[0])
    assert retried.record["metrics"] == ref["metrics"]


@pytest.mark.slow
def test_worker_dying_past_max_retries_is_a_failure(ray_session, volumes, plugin, tmp_path):
    marker = tmp_path / "crash-once"
    marker.touch()
    s = run_batch([volumes / "vol0.h5"], tmp_path / "out", "test-crash-once", MASK,
                  options={"marker": str(marker)}, plugins=[str(plugin)], max_retries=0)
    (failed,) = s.failed
    assert failed.attempts == 1 and "Worker" in failed.error
    assert json.loads((tmp_path / "out" / FAILURES_FILE).read_text())["output"] == failed.output


def test_resume_after_the_driver_crashed_loses_nothing(no_ray, volumes, tmp_path):
    out = tmp_path / "out"

    def crash(result):
        raise KeyboardInterrupt  # the driver dies once the first volume is written

    with pytest.raises(KeyboardInterrupt):
        run_batch(volumes, out, "zero-filled", MASK, on_result=crash)
    assert [p.name for p in out.glob("*.h5")] == ["vol0.h5"]
    first = (out / "vol0.h5").read_bytes()
    s = run_batch(volumes, out, "zero-filled", MASK)
    assert [r.status for r in s.results] == ["skipped", "done", "done"]
    assert (out / "vol0.h5").read_bytes() == first
    assert not list((out / STATE_DIR / "runs").iterdir())  # the crashed run's attempt log


def test_other_settings_and_foreign_outputs_are_not_skipped(no_ray, volumes, tmp_path):
    out = tmp_path / "out"
    first = volumes / "vol0.h5"
    run_batch([first], out, "zero-filled", MASK)
    (r,) = run_batch([first], out, "zero-filled", MaskSpec(acceleration=3)).results
    assert r.status == "failed" and "other settings" in r.error
    (r,) = run_batch([first], out, "zero-filled", MaskSpec(acceleration=3),
                     overwrite=True).results
    assert r.status == "done" and r.record["mask"]["acceleration"] == 3
    # a crash between the output's rename and its marker's: the output is adopted
    (out / STATE_DIR / "done" / "vol0.h5.json").unlink()
    (r,) = run_batch([first], out, "zero-filled", MaskSpec(acceleration=3)).results
    assert r.status == "skipped" and (out / STATE_DIR / "done" / "vol0.h5.json").is_file()
    # ... but not a file that is no output of this method
    (out / "vol1.h5").write_bytes(b"someone else's file")
    (r,) = run_batch([volumes / "vol1.h5"], out, "zero-filled", MASK).results
    assert r.status == "failed" and "overwrite" in r.error
    assert (out / "vol1.h5").read_bytes() == b"someone else's file"
    # debris of a writer killed mid-write is cleaned when the volume is redone
    (out / ".vol1.h5.abc123.tmp").write_bytes(b"half")
    (r,) = run_batch([volumes / "vol1.h5"], out, "zero-filled", MASK, overwrite=True).results
    assert r.status == "done" and not list(out.glob(".vol1.h5.*"))


@pytest.mark.parametrize("fmt,name", [("nifti", "vol0.nii.gz"), ("dicom", "vol0")])
def test_nifti_and_dicom_outputs_resume(no_ray, volumes, tmp_path, fmt, name):
    out = tmp_path / "out"
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK, out_format=fmt).results
    assert r.status == "done" and r.output == str(out / name)
    (out / STATE_DIR / "done" / f"{name}.json").unlink()  # crash before the marker
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK, out_format=fmt).results
    assert r.status == "skipped"  # adopted: its metadata names the method
    (out / STATE_DIR / "done" / f"{name}.json").unlink()
    (r,) = run_batch([volumes / "vol0.h5"], out, "cg-sense", MASK, out_format=fmt).results
    assert r.status == "failed" and "not completed by a batch with method 'cg-sense'" in r.error


def test_bad_arguments_fail_before_running(no_ray, volumes, tmp_path):
    with pytest.raises(ValueError, match="needs Ray"):
        run_batch(volumes, tmp_path / "x", "zero-filled", MASK, address="ray://head:10001")
    with pytest.raises(ValueError, match="unknown method"):
        run_batch(volumes, tmp_path / "x", "no-such-method")
    with pytest.raises(ValueError, match="unknown option"):
        run_batch(volumes, tmp_path / "x", "zero-filled", options={"max_iter": "3"})
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "vol0.h5").write_bytes((volumes / "vol0.h5").read_bytes())
    with pytest.raises(ValueError, match="would both write"):
        run_batch([volumes / "vol0.h5", twin / "vol0.h5"], tmp_path / "x", "zero-filled")
    assert main(["batch", str(tmp_path / "twin"), "--out", str(tmp_path / "y"),
                 "--acceleration", "0.5"]) == 2


def test_find_inputs_lists_volumes_and_series_folders(tmp_path):
    from medrecon.batch import find_inputs, output_name

    for name in ("b.h5", "a.nii.gz", "c.nii", "notes.txt", ".hidden.h5"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "series1").mkdir()
    found = [p.name for p in find_inputs(tmp_path)]
    assert found == ["a.nii.gz", "b.h5", "c.nii", "series1"]
    assert [output_name(tmp_path / n, "nifti") for n in found] == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "series1.nii.gz"]
    assert output_name(tmp_path / "a.nii.gz", "h5") == "a.h5"
    assert output_name(tmp_path / "b.h5", "dicom") == "b"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .h5/.nii"):
        find_inputs(empty)
