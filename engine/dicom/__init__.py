"""DICOM helpers shared by connectors and correlation: instance headers and PACS notifications."""

from engine.dicom.header import DicomHeaderError, InstanceHeader, part10, read_header
from engine.dicom.notification import Notification

__all__ = ["DicomHeaderError", "InstanceHeader", "Notification", "part10", "read_header"]
