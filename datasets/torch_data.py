"""PyTorch datasets for medrecon in one import: fastMRI slices (`FastMRISliceDataset`), the
undersampling transform (`MRITransform`, `collate`) and prior-training images (`ImageDataset`).

The code lives in ``slice_dataset``, ``transforms`` and ``image_dataset``; their module
docstrings state the conventions (split by volume, fastMRI mask seeds, normalization).
"""
from medrecon.datasets.image_dataset import ImageDataset, load_image_tensor
from medrecon.datasets.slice_dataset import (FastMRISliceDataset, VolumeInfo, list_h5_files,
                                             split_volumes)
from medrecon.datasets.transforms import MRITransform, collate, fname_seed, percentile_scale

__all__ = ["FastMRISliceDataset", "VolumeInfo", "list_h5_files", "split_volumes", "MRITransform",
           "collate", "fname_seed", "percentile_scale", "ImageDataset", "load_image_tensor"]
