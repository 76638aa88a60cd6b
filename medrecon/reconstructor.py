"""``Reconstructor``: one method, resolved once, applied to many inputs.

    rec = Reconstructor("dds", device="cuda", checkpoint="runs/prior", steps=50)
    result = rec(kspace, mask, seed=0)              # a ReconResult, like medrecon.reconstruct
    record = rec.reconstruct_file("file.h5", out="file.nii.gz")   # like medrecon.reconstruct_file
    record = rec.reconstruct_file("series_dir", out="recon_dir/")  # DICOM in, DICOM out

The method name and options are checked at construction (unknown names or options raise
ValueError there, not on the first input); options are keywords or ``options=`` an already
resolved options dataclass.  For diffusion methods the prior is loaded once -- at construction
when ``device`` is given (methods with a default prior, the registry's ``prior``; others such as
fdmr on their first run), else on the first input's device -- into the object's own
`medrecon.methods.priors.PriorCache`, so reconstructing many inputs (or alternating several
Reconstructors with different checkpoints) never reloads it.  The object changes no global state.
``reconstruct_file`` takes fastMRI HDF5, DICOM MR series and NIfTI inputs and writes the record's
method, options, NFE, time and seed into the output (`medrecon.pipeline`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from medrecon.methods.priors import PriorCache, preload
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
                 options: Any = None, **kwargs: Any) -> None:
        self.spec: MethodSpec = get_method(method)
        self.method = method
        if options is not None and kwargs:
            raise ValueError(f"options for method {method!r}: give options= or keywords, not both "
                             f"(got options= and {sorted(kwargs)})")
        self.opts = resolve_options(self.spec, kwargs if options is None else options)
        self.options: dict[str, Any] = options_to_dict(self.opts)
        self.device = _normalize_device(device) if device is not None else None
        self.priors = PriorCache()  # what this object's method loads, per device, held for its lifetime
        if self.device is not None:
            preload(self.spec, self.opts, self.device, self.priors)

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint option of a diffusion method (None for classical methods)."""
        if self.spec.kind != "diffusion":
            return None
        return self.options.get("checkpoint")

    def _to(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or self.device is None or not isinstance(x, torch.Tensor):
            return x
        return x.to(self.device)

    def __call__(self, kspace: torch.Tensor, mask: torch.Tensor,
                 smaps: torch.Tensor | None = None, seed: int | None = None,
                 samples: int = 1) -> ReconResult:
        """Reconstruct ``kspace`` ``[..., C, H, W]`` sampled on ``mask`` (see `reconstruct`);
        a batch of slices in the leading dims is reconstructed in one call; ``samples`` > 1
        averages that many posterior samples (diffusion methods)."""
        kspace, mask, smaps = self._to(kspace), self._to(mask), self._to(smaps)
        return reconstruct(kspace, mask, self.method, smaps=smaps, seed=seed, priors=self.priors,
                           options=self.opts, samples=samples)

    def reconstruct_file(self, path, mask: MaskSpec | None = None, slices: str | None = None,
                         out=None, overwrite: bool = False, progress: bool = False,
                         seed: int | None = None, out_format: str | None = None,
                         batch_size: int = 1, coils: int = 1, samples: int = 1) -> dict[str, Any]:
        """`medrecon.pipeline.reconstruct_file` with this method, options and device: the JSON
        record of the volume; ``path`` a fastMRI .h5 file, a DICOM MR series or a NIfTI volume
        (images: k-space simulated with ``coils`` coils, `medrecon.image_inputs`); ``out`` (.h5,
        .nii/.nii.gz or a DICOM folder) written if given, with the record's method, options,
        NFE, time and seed; ``batch_size`` slices per call (e.g. 8 on a GPU); ``samples``
        posterior samples averaged per slice."""
        from medrecon.pipeline import reconstruct_file

        device = str(self.device) if self.device is not None else None
        return reconstruct_file(path, self.method, mask, slices, out, overwrite, progress,
                                device, seed=seed, out_format=out_format, batch_size=batch_size,
                                coils=coils, options=self.opts, priors=self.priors,
                                samples=samples)

    def __repr__(self) -> str:
        changed = {f.name: self.options[f.name] for f in dataclasses.fields(self.spec.options)
                   if self.options[f.name] != self.spec.defaults()[f.name]}
        opts = "".join(f", {k}={v!r}" for k, v in changed.items())
        return f"Reconstructor({self.method!r}, device={self.device}{opts})"
