"""De-identification: DICOM PS3.15 Annex E Basic Profile with its options, HL7 v2 Safe Harbor, re-identification.

`DicomDeidentifier(profile, key).apply(ds)` de-identifies a dataset copy; `deidentify_hl7` an ER7 message;
`reidentify_uids` maps UID pseudonyms in results back with the crosswalk the outcomes return; `deid_folder`
runs a folder (the `radbridge deid` command). Keys come from the keyring; nothing here stores anything.
"""

from engine.deid.cli import deid_folder, load_profile
from engine.deid.dicom import DeidOutcome, DicomDeidentifier
from engine.deid.hl7 import deidentify_hl7
from engine.deid.profile import (
    BurnedInConfig,
    BurnedInDevice,
    DeidProfile,
    Hl7DeidConfig,
    RegionRule,
    SafePrivateTag,
)
from engine.deid.reidentify import reidentify_dataset, reidentify_uids
from engine.deid.report import FolderReport, method
from engine.deid.table import AnnexETable, editions, load_table

__all__ = [
    "AnnexETable",
    "BurnedInConfig",
    "BurnedInDevice",
    "DeidOutcome",
    "DeidProfile",
    "DicomDeidentifier",
    "FolderReport",
    "Hl7DeidConfig",
    "RegionRule",
    "SafePrivateTag",
    "deid_folder",
    "deidentify_hl7",
    "editions",
    "load_profile",
    "load_table",
    "method",
    "reidentify_dataset",
    "reidentify_uids",
]
