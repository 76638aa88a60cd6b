"""Output planning for simulators that write one file per volume."""
from __future__ import annotations

from pathlib import Path

from .publish import probe_writable, remove_stale_temps

__all__ = ["plan_outputs"]


def plan_outputs(out_dir, names: list[str], overwrite: bool) -> list[Path]:
    """``out_dir / name`` for each name (folder created, temp files of dead medrecon runs in it
    removed, writability probed); refuses up front, before anything is written, when any exists
    and ``overwrite`` is false.  The writers then publish without clobbering
    (`medrecon.datasets.publish`), so a file another process creates meanwhile is kept."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    probe_writable(out)
    paths = [out / n for n in names]
    clash = [p for p in paths if p.exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{clash[0]} exists ({len(clash)} of {len(paths)} outputs do); "
                              "pass overwrite=True (--overwrite) to replace them")
    return paths
