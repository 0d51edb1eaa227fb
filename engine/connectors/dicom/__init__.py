"""DICOM: a listener (source: C-STORE, C-ECHO, IAN, MPPS) and a Storage SCU (destination).

pynetdicom does the protocol; this package does TLS, allow-lists, timeouts, memory caps and the
mapping between what the engine did (Outcome) and the DIMSE status the peer gets. Instances are
kept byte for byte as received, in any transfer syntax. Logs and audit entries carry association
ids, peers, AE titles, sizes and status codes, never patient data or UIDs.

The retrieval SCU (C-GET / C-MOVE) is engine.connectors.dicom.retrieve, loaded by its own entry point.
"""

from pynetdicom import _config

from engine.connectors.dicom.config import DicomDestinationConfig, DicomSourceConfig
from engine.connectors.dicom.scp import STORE_STATUS, DicomSource
from engine.connectors.dicom.scu import DicomDestination

# pynetdicom's "standard" event logging writes DIMSE summaries (SOP instance UIDs, AE titles, PDU
# contents at DEBUG) to its logger; our own logs say what is needed, without UIDs.
_config.LOG_HANDLER_LEVEL = "none"

__all__ = ["STORE_STATUS", "DicomDestination", "DicomDestinationConfig", "DicomSource", "DicomSourceConfig"]
