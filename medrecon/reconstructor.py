"""``Reconstructor``: one method, resolved once, applied to many inputs.

    rec = Reconstructor("dds", device="cuda", checkpoint="runs/prior", steps=50)
    result = rec(kspace, mask, seed=0)              # a ReconResult, like medrecon.reconstruct
    record = rec.reconstruct_file("file.h5", out="file.nii.gz")   # like medrecon.reconstruct_file
    record = rec.reconstruct_file("series_dir", out="recon_dir/")  # DICOM in, DICOM out

The method name and options are checked at construction (unknown names or options raise
ValueError there, not on the first input).  For diffusion methods the prior is loaded once -- at
construction when ``device`` is given (the VP and VE-score samplers of
`medrecon.posterior.methods`; other methods such as fdmr on their first run), else on the first
input's device -- and held by the object, so reconstructing many inputs (or alternating several
Reconstructors with different checkpoints) never reloads it.  The object holds no global state of
its own.  ``reconstruct_file`` takes fastMRI HDF5, DICOM MR series and NIfTI inputs and writes the
record's method, options, NFE, time and seed into the output (`medrecon.pipeline`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from medrecon.pipeline import MaskSpec
from medrecon.reconstruct import ReconResult, reconstruct
from medrecon.registry import MethodSpec, get_method, options_to_dict, resolve_options

__all__ = ["Reconstructor"]


def _normalize_device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())  # tensors report cuda:N
    return d


def _model_caches() -> list[dict]:
    """The one-model caches of the loaded posterior modules (``_CACHE`` dicts of
    ``medrecon.posterior.*``: VP/VE priors, the FDMR generator, ...)."""
    import sys

    from medrecon.posterior import methods  # noqa: F401  (its cache exists from here on)

    return [m._CACHE for name, m in list(sys.modules.items())
            if name.startswith("medrecon.posterior.")
            and isinstance(getattr(m, "_CACHE", None), dict)]


# methods whose prior `medrecon.posterior.methods` loads (preloaded at construction with a device);
# other diffusion methods (fdmr, plugins) load on their first run and are held from then on
_SCORE_METHODS = ("hfs-sde",)
_VP_METHODS = ("dds", "ddnm", "diffpir", "dps", "ccdf", "score-mri")
_EITHER_METHODS = ("spirit-diffusion",)  # a VP image prior or a per-coil VE score prior


class Reconstructor:
    """Reconstruct many inputs with one registered ``method`` and fixed ``options``.

    ``device``: where inputs are moved before reconstruction (None: left where they are).
    """

    def __init__(self, method: str = "cg-sense", device: str | torch.device | None = None,
                 **options: Any) -> None:
        self.spec: MethodSpec = get_method(method)
        self.method = method
        self.options: dict[str, Any] = options_to_dict(resolve_options(self.spec, options))
        self.device = _normalize_device(device) if device is not None else None
        self._priors: dict[str, list[tuple[dict, dict]]] = {}  # device -> cache snapshots
        if self.device is not None:
            self._ensure_prior(self.device)

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint option of a diffusion method (None for classical methods)."""
        if self.spec.kind != "diffusion":
            return None
        return self.options.get("checkpoint")

    def _ensure_prior(self, device: torch.device) -> None:
        """Load the prior for ``device`` once (VP and VE-score methods: now; others: on their
        first run); put it back in the samplers' one-model caches when another Reconstructor's
        checkpoint has displaced it since."""
        if self.spec.kind != "diffusion":
            return
        held = self._priors.get(str(device))
        if held is not None:
            for cache, items in held:
                if any(k not in cache for k in items):
                    cache.clear()
                    cache.update(items)
            return
        if self.method in _SCORE_METHODS + _VP_METHODS + _EITHER_METHODS:
            from medrecon.posterior import methods as pm

            loader = (pm.load_score_prior if self.method in _SCORE_METHODS else
                      pm.load_spirit_prior if self.method in _EITHER_METHODS else pm.load_prior)
            loader(self.checkpoint, device, self.method)
            self._hold(device)

    def _hold(self, device: torch.device) -> None:
        """Keep references to what the method loaded for ``device`` (after its first use)."""
        if self.spec.kind == "diffusion" and str(device) not in self._priors:
            self._priors[str(device)] = [(c, dict(c)) for c in _model_caches() if c]

    def _to(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or self.device is None or not isinstance(x, torch.Tensor):
            return x
        return x.to(self.device)

    def __call__(self, kspace: torch.Tensor, mask: torch.Tensor,
                 smaps: torch.Tensor | None = None, seed: int | None = None) -> ReconResult:
        """Reconstruct ``kspace`` ``[..., C, H, W]`` sampled on ``mask`` (see `reconstruct`);
        a batch of slices in the leading dims is reconstructed in one call."""
        kspace, mask, smaps = self._to(kspace), self._to(mask), self._to(smaps)
        if isinstance(kspace, torch.Tensor):
            self._ensure_prior(kspace.device)
        result = reconstruct(kspace, mask, self.method, smaps=smaps, seed=seed, **self.options)
        self._hold(kspace.device)
        return result

    def reconstruct_file(self, path, mask: MaskSpec | None = None, slices: str | None = None,
                         out=None, overwrite: bool = False, progress: bool = False,
                         seed: int | None = None, out_format: str | None = None,
                         batch_size: int = 1, coils: int = 1) -> dict[str, Any]:
        """`medrecon.pipeline.reconstruct_file` with this method, options and device: the JSON
        record of the volume; ``path`` a fastMRI .h5 file, a DICOM MR series or a NIfTI volume
        (images: k-space simulated with ``coils`` coils, `medrecon.image_inputs`); ``out`` (.h5,
        .nii/.nii.gz or a DICOM folder) written if given, with the record's method, options,
        NFE, time and seed; ``batch_size`` slices per call (e.g. 8 on a GPU)."""
        from medrecon.pipeline import reconstruct_file

        dev = self.device or torch.device("cpu")
        self._ensure_prior(dev)
        device = str(self.device) if self.device is not None else None
        record = reconstruct_file(path, self.method, mask, slices, out, overwrite, progress,
                                  device, seed=seed, out_format=out_format,
                                  batch_size=batch_size, coils=coils, **self.options)
        self._hold(dev)
        return record

    def __repr__(self) -> str:
        changed = {f.name: self.options[f.name] for f in dataclasses.fields(self.spec.options)
                   if self.options[f.name] != self.spec.defaults()[f.name]}
        opts = "".join(f", {k}={v!r}" for k, v in changed.items())
        return f"Reconstructor({self.method!r}, device={self.device}{opts})"
