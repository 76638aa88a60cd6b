"""DICOM series in and out (`read_dicom_series`, `write_dicom_series`) with consistent geometry:
reading in `reader`, writing in `writer` (the array and affine convention is in `reader`)."""
from .reader import DicomSeries, read_dicom_series
from .writer import write_dicom_series

__all__ = ["DicomSeries", "read_dicom_series", "write_dicom_series"]
