"""Resuming a batch (`medrecon.batch`): done markers, and adopting outputs a crash left.

A volume's done marker ``OUT_DIR/.medrecon-batch/done/<output name>.json`` holds the settings it
was made with and its record.  A rerun skips a volume whose output exists with a marker of
exactly its settings, or, with no marker (a crash between the two renames), whose output's own
metadata (h5 attrs, NIfTI sidecar, DICOM DerivationDescription) records exactly them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["marker_path", "write_json", "output_settings", "prior_state"]


def write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    from medrecon.datasets.publish import write_published

    text = json.dumps(obj, indent=1)
    write_published(path, lambda tmp: Path(tmp).write_text(text))


def marker_path(job) -> Path:
    return Path(job.state) / "done" / f"{Path(job.out).name}.json"


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj))


def output_settings(out: Path, fmt: str) -> dict[str, Any] | None:
    """The settings recorded in a complete output's own metadata (h5 attrs, NIfTI sidecar, the
    DICOM DerivationDescription), in the form of `run_batch`'s settings; None if unreadable."""
    try:
        if fmt == "h5":
            import h5py
            with h5py.File(out, "r") as f:
                if "reconstruction" not in f:
                    return None
                meta = {k: (json.loads(v) if k in _JSON_ATTRS and isinstance(v, str) else v)
                        for k, v in f.attrs.items()}
        elif fmt == "nifti":
            from medrecon.datasets.nifti import sidecar_path
            meta = json.loads(sidecar_path(out).read_text())
        else:
            import pydicom
            first = min(out.glob("*.dcm"))
            desc = str(pydicom.dcmread(first, stop_before_pixels=True).DerivationDescription)
            method, _, params = desc.removeprefix("medrecon ").partition(" ")
            meta = {"method": method, **json.loads(params.removeprefix("(HU) "))}  # CT: in HU
        mask = meta["mask"]
        if isinstance(mask, dict):  # the record adds the measured fraction to the MaskSpec
            mask = {k: v for k, v in mask.items() if k != "sampled_fraction"}
        return _json_roundtrip({
            "method": meta["method"], "options": meta["options"], "mask": mask,
            "slices": meta["slices"], "seed": meta.get("seed"), "format": fmt,
            "prior": meta.get("prior"), "version": meta.get("medrecon_version")})
    except Exception:  # noqa: BLE001 -- any unreadable output is "not ours"
        return None


_JSON_ATTRS = ("options", "mask", "slices", "simulation")


def prior_state(job) -> tuple[str, dict | None, str | None] | None:
    """What to do with ``job`` (`medrecon.batch`'s job) before running it: ``("skipped",
    record, None)`` (done before), ``("failed", None, error)`` (something else is there) or
    None (run it)."""
    if job.overwrite:
        return None
    out, marker = Path(job.out), marker_path(job)
    if marker.is_file() and out.exists():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if saved.get("settings") == job.settings:
            return "skipped", saved.get("record"), None
        return "failed", None, (
            f"{out} was made with other settings ({_differences(saved.get('settings'), job.settings)}); "
            f"pass overwrite to redo it")
    if out.exists():
        own = output_settings(out, job.fmt)
        want = job.settings
        if own is not None:  # outputs record slices as [start, stop]; a file's own mask as "file"
            want = {**want, "slices": _slice_range(job)}
            if own["mask"] == "file":
                want["mask"] = "file"
        if own == want:  # crashed between output and marker: its metadata says it all
            write_json(marker, {"settings": job.settings, "record": None})
            return "skipped", None, None
        why = ("its metadata records other settings: " + _differences(own, want)
               if own is not None else "it is not a complete medrecon output")
        return "failed", None, (
            f"{out} exists and has no done marker of this batch; {why}; pass overwrite to replace it")
    return None


def _slice_range(job) -> list[int] | None:
    """``[start, stop]`` of the job's slices in its input, as outputs record them."""
    from medrecon.ct.inputs import count_slices, is_ct_input
    from medrecon.image_inputs import input_kind, read_image_volume
    from medrecon.inputs import parse_slices

    try:
        if is_ct_input(job.src):
            n = count_slices(job.src)
        elif input_kind(job.src) in ("fastmri", "ismrmrd", "twix"):
            from medrecon.inputs import open_kspace
            with open_kspace(job.src) as f:
                n = f.num_slices
        else:
            n = read_image_volume(job.src).volume.shape[0]
        r = parse_slices(job.slices, n)
    except (ValueError, OSError, KeyError):
        return None
    return [r.start, r.stop]


def _differences(saved: dict[str, Any] | None, want: dict[str, Any]) -> str:
    """The settings that differ, e.g. ``mask: {...} here, {...} there``."""
    if not isinstance(saved, dict):
        return "no readable settings"
    keys = [k for k in want if saved.get(k) != want[k]]
    return "; ".join(f"{k}: {json.dumps(want[k])} now, {json.dumps(saved.get(k))} before"
                     for k in keys) or "same settings"
