"""De-identification of the DICOM series medrecon writes (DICOM PS3.15 Annex E).

Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal Information
with Modified Dates option, built on dicognito's `Anonymizer`: person names, IDs, institutions
and every non-class UID are replaced by pseudonyms, and every date (with its time) is shifted
by one offset.  One anonymizer serves the whole process, seeded at random, so within a run the
same source value always maps to the same replacement: all slices and all volumes of one input
study share one new StudyInstanceUID and one new FrameOfReferenceUID, a patient keeps one
pseudonymous PatientID, and a source image UID cited in SourceImageSequence is remapped the
same way everywhere.  Different processes (e.g. Ray workers) use different pseudonyms.

dicognito replaces; it does not implement the profile's removals (Table E.1-1 actions X and Z:
StudyDescription, ImageComments, PatientSex/Age/Size/Weight, PatientBirthDate, OtherPatientIDs,
InstitutionAddress, device serial numbers, private tags...).  Those never reach the output
rather than being removed afterwards: `medrecon.datasets.dicom.write_dicom_series` builds a new
dataset and, when de-identifying, takes from the source only ``CARRIED`` (which dicognito
replaces) plus acquisition parameters that the table keeps.  `deidentify` still drops private
tags, whatever built the dataset.
"""
from __future__ import annotations

import importlib.metadata
import secrets
import threading

import dicognito
from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

__all__ = ["CARRIED", "deidentify", "keep_identity", "remap_uid"]

# Source attributes a de-identified derived image still carries, as dicognito's pseudonyms, so
# that outputs of one patient/study group together: Table E.1-1 allows a dummy value (Z/D) or a
# consistent replacement (U) for each.
CARRIED = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
           "AccessionNumber", "FrameOfReferenceUID")

# CID 7050 codes of what is applied: the profile, and dates shifted (not removed).
PROFILE_CODES = (codes.DCM.BasicApplicationConfidentialityProfile,
                 codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)

_LOCK = threading.Lock()
_ANONYMIZER: Anonymizer | None = None


def _apply(anonymizer: Anonymizer, ds: Dataset) -> None:
    """``anonymizer.anonymize(ds)`` also for a dataset without File Meta (dicognito walks it)."""
    bare = getattr(ds, "file_meta", None) is None
    if bare:
        ds.file_meta = FileMetaDataset()
    try:
        anonymizer.anonymize(ds)
    finally:
        if bare:
            del ds.file_meta


def _run_anonymizer() -> Anonymizer:
    """This process's anonymizer, made on first use.  Its seed is redrawn until the date shift
    is not a whole number of days, so that times of day (StudyTime...) change too."""
    global _ANONYMIZER
    with _LOCK:
        while _ANONYMIZER is None:
            candidate = Anonymizer(seed=secrets.token_hex(16))
            probe = Dataset()
            probe.StudyDate, probe.StudyTime = "20000101", "120000"
            _apply(candidate, probe)
            if probe.StudyTime != "120000":
                _ANONYMIZER = candidate
        return _ANONYMIZER


def remap_uid(uid: str) -> str:
    """The UID that `deidentify` puts in place of ``uid`` in this process."""
    ds = Dataset()
    ds.ReferencedSOPInstanceUID = uid
    _apply(_run_anonymizer(), ds)
    return str(ds.ReferencedSOPInstanceUID)


def _method(*values: str) -> list[str]:
    return [v[:64] for v in values]  # LO, one value each


def deidentify(ds: Dataset, source: str = "source") -> None:
    """De-identify ``ds`` in place and record how (PatientIdentityRemoved, DeidentificationMethod,
    DeidentificationMethodCodeSequence, LongitudinalTemporalInformationModified).

    Raises ValueError when ``ds`` says BurnedInAnnotation YES (copied from ``source``): identity
    drawn into the pixels cannot be removed by the profile's header actions.
    """
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise ValueError(f"{source}: BurnedInAnnotation is YES (identifying text drawn into the "
                         "pixels), which de-identification cannot remove; pass anonymize=False "
                         "(CLI --keep-phi) to write an identified series")
    ds.remove_private_tags()
    ds.BurnedInAnnotation = "NO"
    _apply(_run_anonymizer(), ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _method(
        "DICOM PS3.15 Basic Application Level Confidentiality Profile",
        PROFILE_CODES[1].meaning, f"dicognito {dicognito.__version__}",
        f"medrecon {importlib.metadata.version('medrecon')}")
    items = []
    for code in PROFILE_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


def keep_identity(ds: Dataset) -> None:
    """Say in ``ds`` that it was written identified on request (``anonymize=False``)."""
    ds.PatientIdentityRemoved = "NO"
    ds.DeidentificationMethod = "none: identity kept (anonymize=False, CLI --keep-phi)"
    for kw in ("DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified"):
        if kw in ds:
            del ds[kw]
