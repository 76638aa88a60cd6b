"""ISMRMRD raw data (HDF5 ``/dataset/{xml,data}``, the vendor-neutral format) as per-slice k-space.

The XML header is parsed by the ``ismrmrd`` package's schema binding
(``ismrmrd.xsd.CreateFromDocument``), the acquisitions are its compound ``data`` records
(``ismrmrd.hdf5.acquisition_dtype``: header, trajectory, samples).  What is kept, by the
acquisition flags (``ismrmrd.ACQ_*``):

- imaging lines, and parallel-calibration lines (``ACQ_IS_PARALLEL_CALIBRATION``, with or without
  ``_AND_IMAGING``): they count as acquired (`medrecon.datasets.raw_kspace.LineTable`);
- noise scans (``ACQ_IS_NOISE_MEASUREMENT``) are not image data: they feed noise pre-whitening;
- navigators, phase-correction, feedback, dummy, surface-coil-correction and phase-stabilisation
  readouts are skipped.

The rest (oversampling removal, whitening, line placement, mask) is
`medrecon.datasets.raw_kspace.RawKSpaceFile`.  Unsupported data is a ValueError naming the
dimension and its size: a non-Cartesian trajectory, 3-D encoding (kspace_encode_step_2),
several contrasts, averages, repetitions, cardiac phases, sets or encoding spaces, EPI-style
reversed readouts.  The file is opened read-only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrecon.datasets.publish import printable
from medrecon.datasets.raw_kspace import (Encoding, LineTable, RawKSpaceFile,
                                          refuse_extra_dimensions)

__all__ = ["is_ismrmrd", "open_ismrmrd", "read_ismrmrd_header", "describe_ismrmrd"]

_SKIP = ("ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA", "ACQ_IS_HPFEEDBACK_DATA",
         "ACQ_IS_DUMMYSCAN_DATA", "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA",
         "ACQ_IS_PHASE_STABILIZATION_REFERENCE", "ACQ_IS_PHASE_STABILIZATION")
_H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, IndexError)
_COUNTERS = (("contrasts", "contrast"), ("averages", "average"), ("repetitions", "repetition"),
             ("cardiac phases", "phase"), ("sets", "set"))


def _bit(name: str) -> np.uint64:
    import ismrmrd

    return np.uint64(1) << np.uint64(getattr(ismrmrd, name) - 1)


def _group(h5) -> str | None:
    """The ISMRMRD dataset group: ``dataset`` (the library's default name) or the only group
    holding both ``xml`` and ``data``."""
    import h5py

    if "dataset" in h5 and isinstance(h5["dataset"], h5py.Group) and "xml" in h5["dataset"]:
        return "dataset"
    found = [k for k, v in h5.items() if isinstance(v, h5py.Group) and "xml" in v and "data" in v]
    return found[0] if len(found) == 1 else None


def is_ismrmrd(path) -> bool:
    """True for an HDF5 file holding an ISMRMRD dataset group (and no fastMRI ``kspace``)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return "kspace" not in h5 and _group(h5) is not None
    except (OSError, ValueError):
        return False


def read_ismrmrd_header(path, xml: bytes | str | None = None):
    """The file's XML header as ``ismrmrd.xsd.ismrmrdHeader`` (ValueError naming ``path`` when
    it does not follow the ISMRMRD schema)."""
    import h5py
    import ismrmrd

    if xml is None:
        with h5py.File(path, "r") as h5:
            name = _group(h5)
            if name is None:
                raise ValueError(f"{printable(path)}: no ISMRMRD dataset group (xml + data)")
            xml = h5[name]["xml"][0]
    try:
        return ismrmrd.xsd.CreateFromDocument(xml)
    except Exception as exc:  # xsdata raises ParserError, TypeError (missing element), ...
        raise ValueError(f"{printable(path)}: ISMRMRD XML header does not follow the ISMRMRD "
                         f"schema ({type(exc).__name__}: {exc})") from None


def _encoding(source: str, hdr, ref: int, heads) -> Encoding:
    if ref >= len(hdr.encoding):
        raise ValueError(f"{source}: acquisitions refer to encoding {ref}; the header has "
                         f"{len(hdr.encoding)}")
    enc = hdr.encoding[ref]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if traj != "cartesian":
        raise ValueError(f"{source}: {traj} trajectory is not supported; medrecon reads "
                         "Cartesian acquisitions only")
    es, rs = enc.encodedSpace, enc.reconSpace
    steps2 = np.unique(heads["idx"]["kspace_encode_step_2"])
    if es.matrixSize.z > 1 or steps2.size > 1:
        raise ValueError(f"{source}: 3-D encoding (kspace_encode_step_2: {max(steps2.size, es.matrixSize.z)} "
                         f"partitions) is not supported; medrecon reads 2-D multi-slice scans")
    lim = enc.encodingLimits.kspace_encoding_step_1 if enc.encodingLimits else None
    center = int(lim.center) if lim is not None else es.matrixSize.y // 2
    sysinfo = hdr.acquisitionSystemInformation
    bw = sysinfo.relativeReceiverNoiseBandwidth if sysinfo is not None else None
    return Encoding(encoded=(int(es.matrixSize.x), int(es.matrixSize.y)),
                    recon=(int(rs.matrixSize.x), int(rs.matrixSize.y)),
                    encoded_fov_mm=tuple(float(getattr(es.fieldOfView_mm, a)) for a in "xyz"),
                    recon_fov_mm=tuple(float(getattr(rs.fieldOfView_mm, a)) for a in "xyz"),
                    center_line=center,
                    receiver_bandwidth=float(bw) if bw else 1.0)  # Gadgetron's default


def _scan(path):
    """Open ``path``: (h5 file, data dataset, heads, header, source name)."""
    import h5py

    source = printable(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{source}: not a readable HDF5 file: {exc}") from None
    try:
        name = _group(h5)
        if name is None or "data" not in h5[name]:
            raise ValueError(f"{source}: no ISMRMRD acquisitions (expected /dataset/xml and "
                             "/dataset/data)")
        data = h5[name]["data"]
        if data.dtype.names is None or "head" not in data.dtype.names or "data" not in data.dtype.names:
            raise ValueError(f"{source}: /{name}/data is not an ISMRMRD acquisition table")
        hdr = read_ismrmrd_header(path, h5[name]["xml"][0])
        heads = data.fields("head")[()] if data.shape[0] else np.zeros(0, data.dtype["head"])
    except _H5_ERRORS as exc:  # h5py on corrupt object headers or records
        h5.close()
        raise ValueError(f"{source}: corrupt ISMRMRD file ({type(exc).__name__}: {exc})") from None
    except BaseException:
        h5.close()
        raise
    return h5, data, heads, hdr, source


def open_ismrmrd(path) -> RawKSpaceFile:
    """Read ``path`` as per-slice Cartesian k-space (module doc); close it (or use ``with``)."""
    h5, data, heads, hdr, source = _scan(path)
    try:
        return _open(path, h5, data, heads, hdr, source)
    except BaseException:
        h5.close()
        raise


def _open(path, h5, data, heads, hdr, source) -> RawKSpaceFile:
    flags = heads["flags"].astype(np.uint64)

    def has(name):
        return (flags & _bit(name)) != 0

    noise = has("ACQ_IS_NOISE_MEASUREMENT")
    skip = noise.copy()
    for name in _SKIP:
        skip |= has(name)
    keep = np.flatnonzero(~skip)
    if keep.size == 0:
        raise ValueError(f"{source}: no imaging acquisitions (only noise/navigator readouts)")
    h = heads[keep]
    traj = np.unique(h["trajectory_dimensions"])
    if traj.max() > 0:
        raise ValueError(f"{source}: acquisitions carry a k-space trajectory "
                         f"(trajectory_dimensions={int(traj.max())}); only Cartesian data "
                         "without trajectories is supported")
    refs = np.unique(h["encoding_space_ref"])
    if refs.size > 1:
        raise ValueError(f"{source}: {refs.size} encoding spaces (encoding_space_ref "
                         f"{refs.tolist()}) are not supported; medrecon reads one")
    enc = _encoding(source, hdr, int(refs[0]), h)
    refuse_extra_dimensions(source, {f"{what} (idx.{key})": h["idx"][key]
                                     for what, key in _COUNTERS})
    reverse = has("ACQ_IS_REVERSE")[keep]
    if reverse.any():
        raise ValueError(f"{source}: {int(reverse.sum())} readouts are reversed (EPI-style "
                         "bipolar readout, ACQ_IS_REVERSE); they need phase correction, which is "
                         "not supported")
    chans = np.unique(h["active_channels"])
    if chans.size != 1 or chans[0] < 1:
        raise ValueError(f"{source}: active_channels varies between acquisitions "
                         f"({chans.tolist()}); one coil set per scan is supported")
    calib = has("ACQ_IS_PARALLEL_CALIBRATION")[keep] & ~has(
        "ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING")[keep]
    table = LineTable(slice=h["idx"]["slice"].astype(np.int64),
                      line=h["idx"]["kspace_encode_step_1"].astype(np.int64), key=keep,
                      samples=h["number_of_samples"].astype(np.int64),
                      # 0 = not set (a k-space centre at the first sample is no echo): centred
                      center_sample=np.where(h["center_sample"] > 0, h["center_sample"],
                                             h["number_of_samples"] // 2).astype(np.int64),
                      discard_pre=h["discard_pre"].astype(np.int64),
                      discard_post=h["discard_post"].astype(np.int64), calibration_only=calib)
    C = int(chans[0])

    def load(keys: np.ndarray) -> list[np.ndarray]:
        out = []
        order = np.argsort(keys)
        try:
            rows = data[np.asarray(keys)[order].tolist()] if len(keys) else []
        except _H5_ERRORS as exc:
            raise ValueError(f"{source}: cannot read acquisitions ({type(exc).__name__}: "
                             f"{exc})") from None
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        for j in back:
            r = rows[j]
            ns = int(r["head"]["number_of_samples"])
            ch = int(r["head"]["active_channels"])
            out.append(np.asarray(r["data"], np.float32).view(np.complex64).reshape(ch, ns))
        return out

    noise_data, scale = None, 1.0
    nidx = np.flatnonzero(noise)
    if nidx.size:
        nh = heads[nidx]
        if np.any(nh["active_channels"] != C):
            raise ValueError(f"{source}: noise scan has {int(nh['active_channels'][0])} channels, "
                             f"the image scan {C}")
        noise_data = np.concatenate(load(nidx), axis=1)
        scale = float(h["sample_time_us"][0]) / float(nh["sample_time_us"][0]) \
            if nh["sample_time_us"][0] > 0 and h["sample_time_us"][0] > 0 else 1.0
    summary = header_summary(hdr)
    summary.update(acquisitions=int(heads.size), imaging=int((~calib).sum()),
                   calibration_only=int(calib.sum()), noise=int(nidx.size),
                   skipped=int(skip.sum() - nidx.size), channels=C)
    return RawKSpaceFile(path, "ismrmrd", table, enc, C, load, noise_data, scale,
                         close=h5.close, summary=summary)


def header_summary(hdr) -> dict[str, Any]:
    """What ``medrecon info`` shows of an ISMRMRD header."""
    def vec(v):
        return [getattr(v, a) for a in "xyz"]

    sysinfo, exp = hdr.acquisitionSystemInformation, hdr.experimentalConditions
    seq = hdr.sequenceParameters
    encs = []
    for e in hdr.encoding:
        lim = e.encodingLimits
        encs.append({
            "trajectory": getattr(e.trajectory, "value", e.trajectory),
            "encoded_matrix": vec(e.encodedSpace.matrixSize),
            "encoded_fov_mm": vec(e.encodedSpace.fieldOfView_mm),
            "recon_matrix": vec(e.reconSpace.matrixSize),
            "recon_fov_mm": vec(e.reconSpace.fieldOfView_mm),
            "limits": {k: [getattr(lim, k).minimum, getattr(lim, k).maximum,
                           getattr(lim, k).center]
                       for k in ("kspace_encoding_step_1", "kspace_encoding_step_2", "slice",
                                 "contrast", "average", "repetition")
                       if lim is not None and getattr(lim, k) is not None},
            "acceleration": ([e.parallelImaging.accelerationFactor.kspace_encoding_step_1,
                              e.parallelImaging.accelerationFactor.kspace_encoding_step_2]
                             if e.parallelImaging is not None else None)})
    return {"system": None if sysinfo is None else " ".join(
                str(x) for x in (sysinfo.systemVendor, sysinfo.systemModel) if x),
            "field_strength_T": None if sysinfo is None else sysinfo.systemFieldStrength_T,
            "H1_frequency_Hz": exp.H1resonanceFrequency_Hz,
            "TR_ms": list(seq.TR) if seq is not None and seq.TR else None,
            "TE_ms": list(seq.TE) if seq is not None and seq.TE else None,
            "encodings": encs}


def describe_ismrmrd(path) -> dict[str, Any]:
    """``medrecon info``'s description: header summary, acquisition counts, the k-space the
    reader makes, or why it is not supported (``supported: false`` and the message)."""
    try:
        with open_ismrmrd(path) as f:
            return f.describe()
    except ValueError as exc:
        h5, _, heads, hdr, _ = _scan(path)  # the header itself is readable: describe it
        h5.close()
        return {"format": "ismrmrd", "supported": False, "unsupported": str(exc),
                **header_summary(hdr), "acquisitions": int(heads.size)}
