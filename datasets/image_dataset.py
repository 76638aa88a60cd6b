"""`ImageDataset`: clean images for training diffusion priors, as real tensors ``[2, H, W]``
(real, imaginary) or ``[1, H, W]`` (magnitude), the items ``medrecon.models.train`` consumes.

Sources: a folder / list of fastMRI HDF5 files (indexed by `FastMRISliceDataset`: lazy, split
by volume, bad files skipped), or images in a tensor, array, ``.pt`` (``weights_only``) or
``.npy`` (no pickle) file: complex ``[N, H, W]``, real ``[N, H, W]`` (zero imaginary part),
``[N, 2, H, W]`` (real/imag) or ``[N, 1, H, W]`` (magnitude).

From fastMRI files, ``mode="complex"`` is the SENSE combination ``sum_c conj(S_c) x_c`` of the
fully sampled coil images with ESPIRiT maps ``S`` (unit norm over coils, phase of coil 1),
``mode="magnitude"`` the file's ``reconstruction_rss`` (else the RSS); both cropped to the
header's recon matrix, then optionally resized to ``size`` (bilinear, antialiased).

Normalization (samplers depend on it): each image is divided by ``scale``, the 99th percentile
(``percentile``) of its magnitude (``normalize="slice"``, default), or of the magnitudes of all
slices of its volume (``"volume"``; the whole array for tensor sources), or 1 (``"none"``).
Typical images then lie in about [-1, 1] per channel (magnitude mostly <= 1, a few bright
pixels above); ``get(i)["scale"]`` multiplies a normalized image back to file units.  The same
convention is `MRITransform`'s ``normalize="percentile"`` for measured k-space.

``flip=True`` flips each item left-right and up-down with probability 1/2 each, from a
``torch.Generator`` seeded with ``seed`` (plus the DataLoader worker id in workers).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.datasets.fastmri import center_crop
from medrecon.datasets.slice_dataset import FastMRISliceDataset
from medrecon.datasets.transforms import percentile_scale
from medrecon.physics.coils import espirit, rss, sense_combine
from medrecon.physics.fft import ifft2c

__all__ = ["ImageDataset", "load_image_tensor"]


def load_image_tensor(x) -> torch.Tensor:
    """Images from a tensor/array/.pt/.npy as complex64 ``[N, H, W]`` (or float32 magnitudes
    ``[N, H, W]`` for ``[N, 1, H, W]`` input)."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.suffix.lower() == ".pt":
            x = torch.load(p, map_location="cpu", weights_only=True)
        elif p.suffix.lower() == ".npy":
            x = np.load(p, allow_pickle=False)
        else:
            raise ValueError(f"{p}: expected a .pt or .npy file of images")
    x = torch.as_tensor(x)
    if x.is_complex() and x.ndim == 3:
        return x.to(torch.complex64)
    if not x.is_complex() and x.ndim == 3:
        return x.float().to(torch.complex64)
    if not x.is_complex() and x.ndim == 4 and x.shape[1] == 2:
        return torch.view_as_complex(x.float().permute(0, 2, 3, 1).contiguous())
    if not x.is_complex() and x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0].float()
    raise ValueError(f"images must be [N, H, W] (complex or real), [N, 2, H, W] or [N, 1, H, W]; "
                     f"got {x.dtype} {tuple(x.shape)}")


class ImageDataset(torch.utils.data.Dataset):
    """Normalized training images; see the module docstring for sources and normalization."""

    def __init__(self, source, *, mode: str = "complex", size: tuple[int, int] | None = None,
                 normalize: str = "slice", percentile: float = 99.0, split: str | None = None,
                 val_fraction: float = 0.2, split_seed: int = 0, sample_rate: float = 1.0,
                 volume_sample_rate: float | None = None, flip: bool = False, seed: int = 0,
                 return_meta: bool = False, cache: bool = False, calib_width: int = 24,
                 kernel_width: int = 6):
        if mode not in ("complex", "magnitude"):
            raise ValueError(f"mode must be 'complex' or 'magnitude', got {mode!r}")
        if normalize not in ("slice", "volume", "none"):
            raise ValueError(f"normalize must be 'slice', 'volume' or 'none', got {normalize!r}")
        self.mode, self.size, self.normalize, self.q = mode, size, normalize, percentile
        self.flip, self.seed, self.return_meta, self.cache = flip, seed, return_meta, cache
        self.calib_width, self.kernel_width = calib_width, kernel_width
        self._images: dict[int, torch.Tensor] = {}
        self._vol_scale: dict[int, float] = {}
        self._gen: torch.Generator | None = None
        self._gen_pid = -1
        self.tensor: torch.Tensor | None = None
        self.slices: FastMRISliceDataset | None = None
        is_tensor_file = (isinstance(source, (str, os.PathLike))
                          and Path(source).suffix.lower() in (".pt", ".npy"))
        if isinstance(source, (torch.Tensor, np.ndarray)) or is_tensor_file:
            if split is not None:
                raise ValueError("split applies to fastMRI files, not to an image tensor")
            self.tensor = load_image_tensor(source)
            if mode == "complex" and not self.tensor.is_complex():
                raise ValueError("mode='complex' needs complex images; [N, 1, H, W] is magnitude")
        else:
            self.slices = FastMRISliceDataset(source, split=split, val_fraction=val_fraction,
                                              split_seed=split_seed, sample_rate=sample_rate,
                                              volume_sample_rate=volume_sample_rate)
        self.skipped = self.slices.skipped if self.slices is not None else []

    def __len__(self) -> int:
        return len(self.tensor) if self.tensor is not None else len(self.slices)

    # -- images before normalization ------------------------------------------------------
    def _from_fastmri(self, raw: dict[str, Any]) -> torch.Tensor:
        rsize = tuple(raw["metadata"]["recon_size"])
        k = raw["kspace"]
        if self.mode == "magnitude":
            if "target" in raw:
                return raw["target"]
            return center_crop(rss(ifft2c(k)) if k.ndim == 3 else ifft2c(k).abs(), rsize)
        if k.ndim == 2:
            return center_crop(ifft2c(k), rsize)
        cw = min(self.calib_width, *k.shape[-2:])
        maps = espirit(k, calib_width=cw, kernel_width=min(self.kernel_width, cw))
        return center_crop(sense_combine(ifft2c(k), maps), rsize)

    def _to_channels(self, img: torch.Tensor) -> torch.Tensor:
        if self.mode == "magnitude":
            x = img.abs()[None].float()
        else:
            x = torch.view_as_real(img.to(torch.complex64)).permute(2, 0, 1).contiguous()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x[None], size=tuple(self.size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        return x

    def _image(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Channels ``[C, H, W]`` (before normalization) and ``fname``/``slice``."""
        if self.tensor is not None:
            x, meta = self._to_channels(self.tensor[i]), {"fname": "", "slice": i}
        elif self.cache and i in self._images:
            x, meta = self._images[i], self.slices.volume_of(i).metadata(self.slices.samples[i][1])
        else:
            raw = self.slices.raw(i)
            x, meta = self._to_channels(self._from_fastmri(raw)), raw["metadata"]
        if self.cache and self.tensor is None:
            self._images[i] = x
        return x, {"fname": meta["fname"], "slice": meta["slice"]}

    @staticmethod
    def _magnitude(x: torch.Tensor) -> torch.Tensor:
        return x.abs()[0] if x.shape[0] == 1 else x.pow(2).sum(0).sqrt()

    def _volume_scale(self, i: int) -> float:
        v = 0 if self.tensor is not None else self.slices.samples[i][0]
        if v not in self._vol_scale:
            if self.tensor is not None:
                mags = [self._magnitude(self._to_channels(img)) for img in self.tensor]
            else:
                vol = self.slices.volumes[v]
                tmp = FastMRISliceDataset([vol.path])  # every slice, also those sampled out
                mags = [self._magnitude(self._to_channels(self._from_fastmri(tmp.raw(j))))
                        for j in range(len(tmp))]
            self._vol_scale[v] = percentile_scale(torch.stack(mags), self.q)
        return self._vol_scale[v]

    # -- items ----------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        if self._gen is None or self._gen_pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            worker = 0 if info is None else 1 + info.id
            self._gen = torch.Generator().manual_seed(self.seed + worker)
            self._gen_pid = os.getpid()
        return self._gen

    def get(self, i: int) -> dict[str, Any]:
        """``{"image": [C, H, W] float32, "scale", "fname", "slice", "index"}``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = i % len(self)
        x, meta = self._image(i)
        if self.normalize == "slice":
            scale = percentile_scale(self._magnitude(x), self.q)
        elif self.normalize == "volume":
            scale = self._volume_scale(i)
        else:
            scale = 1.0
        x = x / scale
        if self.flip:
            flips = torch.rand(2, generator=self._generator()) < 0.5
            dims = [d for d, f in zip((-1, -2), flips.tolist()) if f]
            if dims:
                x = torch.flip(x, dims)
        return {"image": x.float().contiguous(), "scale": float(scale), **meta, "index": i}

    def __getitem__(self, i: int):
        item = self.get(i)
        return item if self.return_meta else item["image"]
