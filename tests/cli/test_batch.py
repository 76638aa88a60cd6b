"""`medrecon batch` / `medrecon.batch.run_batch`: a local Ray cluster on CPU and the in-process
fallback, on tiny demo volumes (zero-filled: the cost is Ray's, not the reconstruction's)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import medrecon
from medrecon.datasets import publish
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

    from medrecon.methods.classical import zero_filled
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
    # a crash between the output's rename and its marker's: the output is adopted, because its
    # own metadata records exactly these settings ...
    (out / STATE_DIR / "done" / "vol0.h5.json").unlink()
    (r,) = run_batch([first], out, "zero-filled", MaskSpec(acceleration=3)).results
    assert r.status == "skipped" and (out / STATE_DIR / "done" / "vol0.h5.json").is_file()
    # ... and never by a batch with other settings (it was made at 3x, this batch asks 8x)
    (out / STATE_DIR / "done" / "vol0.h5.json").unlink()
    made = (out / "vol0.h5").read_bytes()
    (r,) = run_batch([first], out, "zero-filled", MaskSpec(acceleration=8)).results
    assert r.status == "failed" and "mask" in r.error and "overwrite" in r.error
    assert (out / "vol0.h5").read_bytes() == made
    assert not (out / STATE_DIR / "done" / "vol0.h5.json").exists()
    # ... but not a file that is no output of this method
    (out / "vol1.h5").write_bytes(b"someone else's file")
    (r,) = run_batch([volumes / "vol1.h5"], out, "zero-filled", MASK).results
    assert r.status == "failed" and "overwrite" in r.error
    assert (out / "vol1.h5").read_bytes() == b"someone else's file"
    # debris of a writer killed mid-write is cleaned when the volume is redone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    debris = publish.temp_path(out / "vol1.h5")
    debris = debris.with_name(debris.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    debris.write_bytes(b"half")
    (r,) = run_batch([volumes / "vol1.h5"], out, "zero-filled", MASK, overwrite=True).results
    assert r.status == "done" and not debris.exists()


def test_resume_compares_prior_and_version(no_ray, volumes, tmp_path, monkeypatch):
    import medrecon.batch as batch

    out = tmp_path / "out"
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK).results
    saved = json.loads((out / STATE_DIR / "done" / "vol0.h5.json").read_text())["settings"]
    assert saved["version"] == medrecon.__version__ and saved["prior"] is None
    assert _recon(out / "vol0.h5")[1]["medrecon_version"] == medrecon.__version__
    monkeypatch.setattr(batch, "medrecon_version", lambda: "99.0")  # an upgraded medrecon
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK).results
    assert r.status == "failed" and "version" in r.error
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK, overwrite=True).results
    assert r.status == "done"


def test_prior_digest_follows_the_weights(tmp_path):
    from medrecon.provenance import prior_digest

    assert prior_digest({"max_iter": 10}) is None
    shipped = prior_digest({"checkpoint": ""})
    assert shipped == prior_digest({"checkpoint": ""}) != prior_digest({"checkpoint": "brain128-vp"})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights one")
    one = prior_digest({"checkpoint": str(ckpt)})
    (ckpt / "model.safetensors").write_bytes(b"weights two")  # retrained in place
    assert prior_digest({"checkpoint": str(ckpt)}) != one


def test_inputs_are_never_outputs(no_ray, volumes, tmp_path):
    work = tmp_path / "data"
    work.mkdir()
    for p in volumes.glob("*.h5"):
        (work / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert main(["batch", str(work), "--out", str(work), "--method", "zero-filled",
                     *MASK_ARGS, *extra]) == 2
        assert main(["batch", str(work), "--out", str(work / "recon"), "--method",
                     "zero-filled", *MASK_ARGS, *extra]) == 2
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    with pytest.raises(ValueError, match="is the input"):
        run_batch([work / "vol0.h5"], work, "zero-filled", MASK, overwrite=True)


def test_reaper_stops_what_a_killed_driver_left(tmp_path):
    """A driver killed with SIGKILL: the process tree it registered (a child that starts a
    grandchild, as the raylet starts its agents) is stopped by the reaper."""
    pidfile = tmp_path / "pids"
    driver = textwrap.dedent(f'''
        import subprocess, sys, time
        from medrecon.batch_reaper import start_reaper
        reaper = start_reaper()
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); print(g.pid, flush=True); time.sleep(120)"],
            stdout=subprocess.PIPE, text=True)
        grandchild = int(child.stdout.readline())
        reaper.watch([child.pid])
        open({str(pidfile)!r}, "w").write(f"{{child.pid}} {{grandchild}} {{reaper.pid}}")
        time.sleep(120)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.time() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child, grandchild, reaper = map(int, pidfile.read_text().split())
    time.sleep(1.5)  # the reaper's poll sees the grandchild
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_running(p) for p in (child, grandchild, reaper)):
        time.sleep(0.2)
    assert not any(_running(p) for p in (child, grandchild, reaper))


def _running(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_no_ray_process_outlives_the_batch(volumes, tmp_path, sig):
    """A real `medrecon batch` with its own local Ray instance, stopped mid-run."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray")
    sleeper = tmp_path / "sleep_plugin.py"
    sleeper.write_text(textwrap.dedent('''
        import time
        from dataclasses import dataclass
        from medrecon.registry import register_method

        @dataclass
        class SleepOptions:
            pass

        @register_method("test-sleep", SleepOptions, "test only: sleep")
        def sleep(kspace, mask, smaps, opts, generator):
            time.sleep(300)
    '''))
    cmd = [sys.executable, "-m", "medrecon.cli", "batch", str(volumes), "--out",
           str(tmp_path / "out"), "--method", "test-sleep", "--plugin", str(sleeper),
           *MASK_ARGS, "--local-cpus", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        names = []
        for c in psutil.Process(proc.pid).children(recursive=True):
            try:
                names.append(" ".join(c.cmdline()))
            except psutil.Error:
                pass
        if any("_run_volume" in n for n in names):  # a task is running
            break
        time.sleep(0.5)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, getattr(signal, sig))
    code = proc.wait(timeout=60)
    if sig == "SIGTERM":
        assert code == 143
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("fmt,name", [("nifti", "vol0.nii.gz"), ("dicom", "vol0")])
def test_nifti_and_dicom_outputs_resume(no_ray, volumes, tmp_path, fmt, name):
    out = tmp_path / "out"
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK, out_format=fmt).results
    assert r.status == "done" and r.output == str(out / name)
    (out / STATE_DIR / "done" / f"{name}.json").unlink()  # crash before the marker
    (r,) = run_batch([volumes / "vol0.h5"], out, "zero-filled", MASK, out_format=fmt).results
    assert r.status == "skipped"  # adopted: its metadata records exactly these settings
    (out / STATE_DIR / "done" / f"{name}.json").unlink()
    (r,) = run_batch([volumes / "vol0.h5"], out, "cg-sense", MASK, out_format=fmt).results
    assert r.status == "failed" and "no done marker" in r.error and "method" in r.error


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
    from medrecon.inputs import find_inputs
    from medrecon.outputs import output_name

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
    with pytest.raises(ValueError, match="no volume files"):
        find_inputs(empty)


def test_recon_dir_and_batch_dir_see_the_same_inputs(no_ray, volumes, tmp_path, capsys):
    """One `medrecon.inputs.find_inputs` for both: volume files and series sub-folders."""
    import shutil

    from medrecon.datasets.dicom import write_dicom_series

    d = tmp_path / "in"
    shutil.copytree(volumes, d)
    img = np.abs(np.random.default_rng(0).normal(size=(1, 32, 32))).astype(np.float32) + 1
    write_dicom_series(img, d / "mr_series", modality="MR")
    (d / "notes.txt").write_text("not an input")
    assert main(["recon", str(d), "--method", "zero-filled", "--json", "--quiet",
                 *MASK_ARGS]) == 0
    seen_by_recon = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    summary = run_batch(d, tmp_path / "out", "zero-filled", MASK)
    assert [r.file for r in summary.results] == [str(d.absolute() / p) for p in
                                                 ("mr_series", "vol0.h5", "vol1.h5", "vol2.h5")]
    assert [os.path.abspath(f) for f in seen_by_recon] == [r.file for r in summary.results]
    assert not summary.failed
