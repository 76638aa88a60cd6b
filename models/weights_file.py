"""Weights files of a checkpoint, checked before their tensors are read (issue 15).

- ``confined``: a ``files`` entry must resolve (symlinks included) to a regular file inside the
  checkpoint folder: ``../other/model.safetensors`` and ``/etc/passwd`` are refused.
- ``read_header``: the safetensors header alone -- 8-byte little-endian length, then that many bytes
  of JSON (https://github.com/huggingface/safetensors#format) -- with the length capped and every
  entry checked (dtype, shape, offsets inside the file), so a truncated or bit-flipped file gives a
  one-line error instead of whatever the reader raises.
- ``check_header``: names, shapes and dtypes equal to the network's (built on the ``meta`` device by
  ``expected_state`` -- no memory), the parameter total equal to the config's arithmetic count
  (``network_size``).  An int32 tensor where float32 is expected is refused (it used to be cast).
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable

import torch

from .config_schema import CheckpointConfigError

__all__ = ["MAX_HEADER_BYTES", "DTYPES", "confined", "read_header", "header_elements", "check_header",
           "expected_state", "load_tensors", "checked_weights", "checked_file"]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
DTYPES = {"BOOL": (torch.bool, 1), "U8": (torch.uint8, 1), "I8": (torch.int8, 1), "I16": (torch.int16, 2),
          "I32": (torch.int32, 4), "I64": (torch.int64, 8), "F16": (torch.float16, 2),
          "BF16": (torch.bfloat16, 2), "F32": (torch.float32, 4), "F64": (torch.float64, 8),
          "U16": (torch.uint16, 2), "U32": (torch.uint32, 4), "U64": (torch.uint64, 8),
          "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1)}
Header = dict[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)


def _one_line(exc: BaseException, n: int = 200) -> str:
    return " ".join(str(exc).split())[:n]


def confined(directory: Path, name: str, entry: str, config_file: Any) -> Path:
    """The file ``entry`` of ``files.<name>``, resolved; refused unless a regular file inside ``directory``."""
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, entry))
    if os.path.commonpath([root, path]) != root:
        raise CheckpointConfigError(f"{config_file}: files.{name}: {entry!r} resolves to {path}, outside the "
                                    f"checkpoint folder {root}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory / entry}: file listed in the checkpoint config is missing")
    if not os.path.isfile(path):
        raise CheckpointConfigError(f"{config_file}: files.{name}: {entry!r} is not a regular file")
    return Path(path)


def read_header(file: Path) -> Header:
    """Parse and check the header of the safetensors ``file`` without reading its tensors."""
    def bad(msg: str) -> CheckpointConfigError:
        return CheckpointConfigError(f"{file}: cannot read safetensors ({msg})")

    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise bad(f"header length {n} exceeds the file ({size} bytes) or the limit {MAX_HEADER_BYTES}")
        raw = f.read(n)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not JSON: {_one_line(exc, 80)}") from None
    if not isinstance(meta, dict):
        raise bad("header is not a JSON object")
    data = size - 8 - n
    out: Header = {}
    spans = []
    for name, e in meta.items():
        if name == "__metadata__":
            continue
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"} and e["dtype"] in DTYPES
                and isinstance(e["shape"], list) and len(e["shape"]) <= 16
                and all(type(s) is int and 0 <= s < 2 ** 40 for s in e["shape"])
                and isinstance(e["data_offsets"], list) and len(e["data_offsets"]) == 2
                and all(type(o) is int for o in e["data_offsets"])):
            raise bad(f"tensor {name[:80]!r}: malformed entry")
        begin, end = e["data_offsets"]
        nbytes = math.prod(e["shape"]) * DTYPES[e["dtype"]][1]
        if not 0 <= begin <= end <= data or end - begin != nbytes:
            raise bad(f"tensor {name[:80]!r}: data offsets {e['data_offsets']} do not fit its shape "
                      f"{e['shape']} ({e['dtype']}) in {data} data bytes")
        spans.append((begin, end))
        out[name] = (e["dtype"], tuple(e["shape"]))
    spans.sort()
    if any(b < a_end for (_, a_end), (b, _) in zip(spans, spans[1:])):
        raise bad("tensors overlap")
    return out


def header_elements(header: Header) -> int:
    return sum(math.prod(shape) for _, shape in header.values())


def expected_state(build: Callable[[], torch.nn.Module], config_file: Any) -> dict[str, tuple[torch.dtype, tuple]]:
    """name -> (dtype, shape) of ``build()``'s state dict, built on the ``meta`` device (no memory).
    Call only after the schema and ``network_size.check_size`` passed."""
    try:
        with torch.device("meta"):
            sd = build().state_dict()
    except (ValueError, TypeError, RuntimeError, AssertionError) as exc:  # safety net behind the schema
        raise CheckpointConfigError(f"{config_file}: the network cannot be built ({_one_line(exc)})") from None
    return {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}


def check_header(expected: dict[str, tuple[torch.dtype, tuple]], header: Header, file: Path,
                 params: int | None = None) -> None:
    """Refuse unless ``header`` holds exactly ``expected``'s names, shapes and dtypes, and, when given,
    ``params`` elements in all (the config's arithmetic count, checked last: names and shapes give the
    more precise message)."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointConfigError(
            f"{file}: weights do not match the network in config.json (missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    for k, (dtype, shape) in expected.items():
        if header[k][1] != shape:
            raise CheckpointConfigError(f"{file}: weight {k!r} has shape {header[k][1]}, the network expects {shape}")
        if DTYPES[header[k][0]][0] != dtype:
            raise CheckpointConfigError(f"{file}: weight {k!r} is {header[k][0]} ({DTYPES[header[k][0]][0]}), the "
                                        f"network expects {dtype} (weights are never cast)")
    got = header_elements(header)  # names and shapes agree; a differing total means the arithmetic is stale
    if params is not None and got != params:
        raise CheckpointConfigError(f"{file}: holds {got} weights, the network in config.json has {params} "
                                    f"parameters by medrecon.models.network_size")


def load_tensors(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a (header-checked) safetensors file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device=str(device))
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise CheckpointConfigError(f"{file}: cannot read safetensors ({_one_line(exc)})") from None


def checked_weights(directory: Path, files: dict[str, str], name: str, config_file: Any,
                    expected: dict[str, tuple[torch.dtype, tuple]], params: int) -> Path:
    """The confined path of ``files[name]`` once its header matches ``expected`` and ``params``."""
    path = confined(directory, name, files[name], config_file)
    check_header(expected, read_header(path), path, params)
    return path


def checked_file(directory: Path, files: dict[str, str], name: str, config_file: Any, max_elements: int) -> Path:
    """The confined path of ``files[name]`` (optimizer state, RNG states: no fixed layout) once its
    header parses and holds at most ``max_elements`` elements."""
    path = confined(directory, name, files[name], config_file)
    n = header_elements(read_header(path))
    if n > max_elements:
        raise CheckpointConfigError(f"{path}: holds {n} elements, more than the {max_elements} a {name} file "
                                    f"of this network can have")
    return path
