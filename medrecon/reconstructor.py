"""``Reconstructor``: one method, resolved once, applied to many inputs.

    rec = Reconstructor("dds", device="cuda", checkpoint="runs/prior", steps=50)
    result = rec(kspace, mask, seed=0)              # a ReconResult, like medrecon.reconstruct
    record = rec.reconstruct_file("file.h5", out="file.nii.gz")   # like medrecon.reconstruct_file

The method name and options are checked at construction (unknown names or options raise
ValueError there, not on the first input).  For diffusion methods with a ``checkpoint`` option the
prior is loaded once -- at construction when ``device`` is given, else on the first input's device
-- and held by the object, so reconstructing many inputs (or alternating several Reconstructors
with different checkpoints) never reloads it.  The object holds no global state of its own.
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


class Reconstructor:
    """Reconstruct many inputs with one registered ``method`` and fixed ``options``.

    ``device``: where inputs are moved before reconstruction (None: left where they are).
    """

    def __init__(self, method: str = "cg-sense", device: str | torch.device | None = None,
                 **options: Any) -> None:
        self.spec: MethodSpec = get_method(method)
        self.method = method
        self.options: dict[str, Any] = options_to_dict(resolve_options(self.spec, options))
        if self.spec.kind == "diffusion" and self.options.get("checkpoint") == "":
            raise ValueError(f"method {method!r} needs the option checkpoint=<directory of a "
                             "medrecon checkpoint>; train one with `medrecon train`")
        self.device = _normalize_device(device) if device is not None else None
        self._priors: dict[str, tuple[Any, Any]] = {}  # device -> (posterior cache key, prior)
        if self.device is not None:
            self._ensure_prior(self.device)

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint directory of a diffusion method (None for classical methods)."""
        if self.spec.kind != "diffusion":
            return None
        return self.options.get("checkpoint") or None

    def _ensure_prior(self, device: torch.device) -> None:
        """Load the prior for ``device`` once; put it back in the samplers' one-model cache
        when another checkpoint has displaced it since."""
        if self.checkpoint is None:
            return
        from medrecon.posterior import methods as pm

        held = self._priors.get(str(device))
        if held is None:
            prior = pm.load_prior(self.checkpoint, device, self.method)
            key = next((k for k, v in pm._CACHE.items() if v is prior), None)
            self._priors[str(device)] = (key, prior)
        elif held[0] is not None and held[0] not in pm._CACHE:
            pm._CACHE.clear()
            pm._CACHE[held[0]] = held[1]

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
        return reconstruct(kspace, mask, self.method, smaps=smaps, seed=seed, **self.options)

    def reconstruct_file(self, path, mask: MaskSpec | None = None, slices: str | None = None,
                         out=None, overwrite: bool = False, progress: bool = False,
                         seed: int | None = None, out_format: str | None = None,
                         batch_size: int = 1) -> dict[str, Any]:
        """`medrecon.pipeline.reconstruct_file` with this method, options and device: the JSON
        record of the volume; ``out`` (.h5, .nii/.nii.gz or a DICOM folder) written if given;
        ``batch_size`` slices per call (e.g. 8 on a GPU)."""
        from medrecon.pipeline import reconstruct_file

        self._ensure_prior(self.device or torch.device("cpu"))
        device = str(self.device) if self.device is not None else None
        return reconstruct_file(path, self.method, mask, slices, out, overwrite, progress, device,
                                seed=seed, out_format=out_format, batch_size=batch_size,
                                **self.options)

    def __repr__(self) -> str:
        changed = {f.name: self.options[f.name] for f in dataclasses.fields(self.spec.options)
                   if self.options[f.name] != self.spec.defaults()[f.name]}
        opts = "".join(f", {k}={v!r}" for k, v in changed.items())
        return f"Reconstructor({self.method!r}, device={self.device}{opts})"
