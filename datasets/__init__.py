"""File formats and simulators (`medrecon.datasets`): fastMRI HDF5, DICOM, NIfTI, PyTorch datasets.

Names are imported lazily (``medrecon.datasets.read_dicom_series`` loads pydicom only when used),
so ``import medrecon`` stays light.  Modules:

- ``fastmri``: lazy fastMRI HDF5 reader, schema / submission writers, ISMRMRD header;
- ``ismrmrd``, ``twix``, ``raw_kspace``: ISMRMRD and Siemens twix raw data read as per-slice
  k-space with FastMRIFile's interface;
- ``dicom``, ``nifti``, ``geometry``: DICOM series and NIfTI in and out with consistent geometry;
- ``simulate_mri``, ``simulate_ct``, ``anatomy``, ``augment``, ``demo``: simulators writing the
  same formats (``medrecon simulate``);
- ``slice_dataset``, ``transforms``, ``image_dataset`` (re-exported by ``torch_data``): PyTorch
  datasets for reconstruction and for training priors.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "fastmri": ["FastMRIFile", "ISMRMRDHeader", "make_ismrmrd_header", "parse_ismrmrd_header",
                "write_fastmri", "write_reconstruction", "center_crop"],
    "ismrmrd": ["open_ismrmrd", "describe_ismrmrd", "read_ismrmrd_header"],
    "twix": ["open_twix", "describe_twix"],
    "raw_kspace": ["RawKSpaceFile", "prewhitening_matrix"],
    "dicom": ["DicomSeries", "read_dicom_series", "write_dicom_series"],
    "nifti": ["NiftiVolume", "read_nifti", "write_nifti", "dicom_to_nifti_affine",
              "nifti_affine_to_dicom"],
    "demo": ["make_demo_volume", "make_demo_file"],
    "simulate_mri": ["simulate_mri_volume", "simulate_mri_dataset"],
    "simulate_ct": ["simulate_ct_volume", "simulate_ct_dataset", "read_ct", "write_ct"],
    "slice_dataset": ["FastMRISliceDataset"],
    "transforms": ["MRITransform", "collate"],
    "image_dataset": ["ImageDataset"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
