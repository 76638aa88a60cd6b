"""Siemens twix raw data (``.dat``, VB and VD/VE) as per-slice k-space, read with ``twixtools``.

``twixtools.read_twix`` lists every measurement of the file with its protocol (``hdr``) and its
measurement data blocks (MDBs: header + samples, read from disk on access).  The image scan is
the last measurement (the one ``siemens_to_ismrmrd`` converts by default); noise-adjust readouts
(MDH flag ``NOISEADJSCAN``) of any measurement feed noise pre-whitening.  Of the image scan:

- imaging lines and parallel-calibration lines (``PATREFSCAN``, with or without
  ``PATREFANDIMASCAN``) are kept; phase-correction, feedback and sync blocks are skipped
  (``twixtools.mdh_def.is_image_scan``);
- matrices and FOVs come from the protocol (``MeasYaps``): recon readout = ``lBaseResolution``,
  encoded readout = the samples of a line (twice the base resolution: Siemens oversamples the
  readout 2x), phase lines = ``lPhaseEncodingLines``, FOV from ``sSliceArray.asSlice[0]``;
- each line is placed by its MDH ``Counter.Lin`` around ``CenterLin``, its samples by
  ``CenterCol`` and ``CutOff`` (as ``siemens_to_ismrmrd`` maps them to ISMRMRD).

The relative receiver noise bandwidth of Siemens receivers is 0.793 (the value
``siemens_to_ismrmrd`` writes into every header it makes); dwell times are ``sRXSPEC.alDwellTime``.
Everything else is `medrecon.datasets.raw_kspace.RawKSpaceFile`.  Unsupported data is a
ValueError naming the dimension and its size: non-Cartesian ``sKSpace.ucTrajectory``, 3-D
(``ucDimension``, partitions), several echoes/contrasts, averages, repetitions, cardiac phases
or sets, EPI-style reflected lines.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.datasets.publish import printable
from medrecon.datasets.raw_kspace import (Encoding, LineTable, RawKSpaceFile,
                                          refuse_extra_dimensions)

__all__ = ["open_twix", "describe_twix", "SIEMENS_RECEIVER_BANDWIDTH"]

SIEMENS_RECEIVER_BANDWIDTH = 0.793
_TRAJECTORY = {1: "cartesian", 2: "radial", 4: "spiral", 8: "propeller (BLADE)"}
_COUNTERS = (("contrasts (echoes, Counter.Eco)", "Eco"), ("averages (Counter.Ave)", "Ave"),
             ("repetitions (Counter.Rep)", "Rep"), ("cardiac phases (Counter.Phs)", "Phs"),
             ("sets (Counter.Set)", "Set"))


def _read(path):
    """``twixtools.read_twix`` of ``path`` (its progress prints silenced), headers parsed, data
    left on disk."""
    import twixtools

    source = printable(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source}: no such file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            scans = twixtools.read_twix(str(path), parse_pmu=False, parse_geometry=False,
                                        verbose=False, keep_syncdata=False)
    except Exception as exc:  # twixtools raises many kinds on a file that is not twix
        raise ValueError(f"{source}: not a readable Siemens twix file ({type(exc).__name__}: "
                         f"{exc})") from None
    scans = [s for s in scans if isinstance(s, dict)]
    if not scans or "hdr" not in scans[-1] or not scans[-1].get("mdb"):
        raise ValueError(f"{source}: not a Siemens twix file, or it holds no measurement with "
                         "data")
    return scans, source


def _prot(source: str, hdr: dict, *keys, default=None):
    node: Any = hdr
    for k in keys:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            if default is not None:
                return default
            raise ValueError(f"{source}: twix protocol lacks {'.'.join(map(str, keys))}") from None
    return node


def _encoding(source: str, hdr: dict, samples: int) -> Encoding:
    yaps = _prot(source, hdr, "MeasYaps")
    traj = int(_prot(source, yaps, "sKSpace", "ucTrajectory", default=1))
    if traj != 1:
        raise ValueError(f"{source}: {_TRAJECTORY.get(traj, f'ucTrajectory={traj:#x}')} "
                         "trajectory is not supported; medrecon reads Cartesian acquisitions only")
    dim = int(_prot(source, yaps, "sKSpace", "ucDimension", default=2))
    if dim == 4:
        parts = _prot(source, yaps, "sKSpace", "lPartitions", default=0)
        raise ValueError(f"{source}: 3-D encoding ({parts} partitions) is not supported; "
                         "medrecon reads 2-D multi-slice scans")
    base = int(_prot(source, yaps, "sKSpace", "lBaseResolution"))
    lines = int(_prot(source, yaps, "sKSpace", "lPhaseEncodingLines"))
    sl = _prot(source, yaps, "sSliceArray", "asSlice", 0)
    fx, fy = float(sl.get("dReadoutFOV", 0.0)), float(sl.get("dPhaseFOV", 0.0))
    fz = float(sl.get("dThickness", 1.0))
    return Encoding(encoded=(samples, lines), recon=(base, lines),
                    encoded_fov_mm=(fx * samples / max(base, 1), fy, fz),
                    recon_fov_mm=(fx, fy, fz), center_line=0,
                    receiver_bandwidth=SIEMENS_RECEIVER_BANDWIDTH)


def _dwell(hdr: dict) -> float | None:
    try:
        return float(hdr["MeasYaps"]["sRXSPEC"]["alDwellTime"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def open_twix(path) -> RawKSpaceFile:
    """Read the image scan of ``path`` as per-slice Cartesian k-space (module doc)."""
    import dataclasses

    scans, source = _read(path)
    scan = scans[-1]
    mdbs = [m for m in scan["mdb"] if not m.is_flag_set("SYNCDATA") and not m.is_flag_set("ACQEND")]
    keep = [m for m in mdbs if m.is_image_scan() or m.is_flag_set("PATREFSCAN")]
    if not keep:
        raise ValueError(f"{source}: the image scan holds no imaging readouts")
    counter = {name: np.array([getattr(m.mdh.Counter, name) for m in keep]) for name in
               ("Lin", "Sli", "Par", "Eco", "Ave", "Rep", "Phs", "Set")}
    samples = np.array([m.mdh.SamplesInScan for m in keep], np.int64)
    enc = _encoding(source, scan["hdr"], int(samples.max()))
    if np.unique(counter["Par"]).size > 1:
        raise ValueError(f"{source}: 3-D encoding ({np.unique(counter['Par']).size} partitions, "
                         "Counter.Par) is not supported; medrecon reads 2-D multi-slice scans")
    refuse_extra_dimensions(source, {what: counter[key] for what, key in _COUNTERS})
    reflect = sum(m.is_flag_set("REFLECT") for m in keep)
    if reflect:
        raise ValueError(f"{source}: {reflect} lines are reflected (EPI-style bipolar readout, "
                         "MDH REFLECT); they need phase correction, which is not supported")
    chans = np.unique([m.mdh.UsedChannels for m in keep])
    if chans.size != 1:
        raise ValueError(f"{source}: the number of channels varies between lines "
                         f"({chans.tolist()}); one coil set per scan is supported")
    centers = np.unique([m.mdh.CenterLin for m in keep if m.is_image_scan()] or [0])
    enc = dataclasses.replace(enc, center_line=int(centers[0]))
    table = LineTable(slice=counter["Sli"].astype(np.int64), line=counter["Lin"].astype(np.int64),
                      key=np.arange(len(keep)), samples=samples,
                      center_sample=np.array([m.mdh.CenterCol for m in keep], np.int64),
                      discard_pre=np.array([m.mdh.CutOff.Pre for m in keep], np.int64),
                      discard_post=np.array([m.mdh.CutOff.Post for m in keep], np.int64),
                      calibration_only=np.array([not m.is_image_scan() for m in keep]))
    C = int(chans[0])

    def load(keys):
        try:
            return [np.asarray(keep[int(k)].data, np.complex64) for k in keys]
        except (OSError, ValueError, TypeError) as exc:  # a truncated file
            raise ValueError(f"{source}: cannot read line data ({type(exc).__name__}: "
                             f"{exc})") from None

    noise, scale, noise_scans, n_noise = None, 1.0, [], 0
    for s in scans:
        lines = [m for m in s["mdb"] if m.is_flag_set("NOISEADJSCAN")]
        if lines:
            noise_scans.append((s, lines))
    if noise_scans:
        s, lines = noise_scans[-1]
        n_noise = len(lines)
        noise = np.concatenate([np.asarray(m.data, np.complex64) for m in lines], axis=1)
        d_img, d_noise = _dwell(scan["hdr"]), _dwell(s.get("hdr", {}))
        scale = d_img / d_noise if d_img and d_noise else 1.0
    yaps = scan["hdr"].get("MeasYaps", {})
    summary = {"protocol": str(yaps.get("tProtocolName", "")),
               "sequence": str(scan["hdr"].get("Meas", {}).get("tSequenceFileName")
                               or scan["hdr"].get("Config", {}).get("tSequenceFileName", "")),
               "measurements": len(scans), "readouts": len(mdbs),
               "imaging": int((~table.calibration_only).sum()),
               "calibration_only": int(table.calibration_only.sum()),
               "noise": n_noise,
               "channels": C, "base_resolution": enc.recon[0],
               "phase_encoding_lines": enc.encoded[1], "readout_samples": enc.encoded[0],
               "readout_fov_mm": enc.recon_fov_mm[0], "phase_fov_mm": enc.recon_fov_mm[1]}
    return RawKSpaceFile(path, "twix", table, enc, C, load, noise, scale, summary=summary)


def describe_twix(path) -> dict[str, Any]:
    """``medrecon info``'s description of a twix file (or why it is not supported)."""
    try:
        with open_twix(path) as f:
            return f.describe()
    except ValueError as exc:
        scans, _ = _read(path)  # a readable file: say what it is and why it is refused
        yaps = scans[-1]["hdr"].get("MeasYaps", {})
        return {"format": "twix", "supported": False, "unsupported": str(exc),
                "protocol": str(yaps.get("tProtocolName", "")), "measurements": len(scans)}
