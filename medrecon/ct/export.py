"""Export a CT training run as a shippable prior (`medrecon.builtin_priors`' ``ct128-*``; docs/priors.md).

Kept beside the CT networks, not in `medrecon.builtin_priors`, which the networks' own modules
import (a leaf must not import them back)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["export_ct"]


def export_ct(run_dir, out_dir, method: str, overwrite: bool = False) -> Path:
    """Write a CT training run as a shippable prior with one set of weights (the EMA where saved):
    ``method`` ``"pixel-ddpm"`` (``run_dir`` a ct-pixel-ddpm checkpoint) or ``"latent-cold-diffusion"``
    (a ct-latent-cold run folder: ``autoencoder/`` + ``latent/``, written to a hidden temporary folder
    and swapped into place, so a crash never leaves half a prior).  ``extra`` keeps the run's record
    (data, steps, losses) plus ``source_step`` and ``weights``."""
    import shutil
    import tempfile

    from medrecon.ct.autoencoder import load_autoencoder, save_autoencoder
    from medrecon.ct.cold_diffusion import load_cold_diffusion, save_cold_diffusion
    from medrecon.ct.pixel_ddpm import load_pixel_ddpm, save_pixel_ddpm
    from medrecon.models.checkpoint import swap_directory

    run, out = Path(run_dir), Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if method == "pixel-ddpm":
        cfg = json.loads((run / "config.json").read_text())
        extra = {k: v for k, v in (cfg.get("extra") or {}).items()
                 if k not in ("network", "kind", "condition", "normalization")}
        step = int(cfg.get("step", 0))
        weights = "ema" if "ema" in cfg.get("files", {}) else "raw"
        return save_pixel_ddpm(out, load_pixel_ddpm(run), step=step, overwrite=overwrite,
                               extra={**extra, "source_step": step, "weights": weights})
    if method != "latent-cold-diffusion":
        raise ValueError(f"method: expected 'pixel-ddpm' or 'latent-cold-diffusion', got {method!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ae_cfg, lat_cfg = (json.loads((run / d / "config.json").read_text()) for d in ("autoencoder", "latent"))
        save_autoencoder(tmp / "autoencoder", load_autoencoder(run / "autoencoder"), step=int(ae_cfg.get("step", 0)),
                         extra={**(ae_cfg.get("extra") or {}), "weights": "raw"})
        lstep = int(lat_cfg.get("step", 0))
        weights = "ema" if "ema" in lat_cfg.get("files", {}) else "raw"
        save_cold_diffusion(tmp / "latent", load_cold_diffusion(run / "latent"), step=lstep,
                            extra={**(lat_cfg.get("extra") or {}), "source_step": lstep, "weights": weights})
        swap_directory(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
