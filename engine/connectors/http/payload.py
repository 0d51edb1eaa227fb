"""Webhook bodies -> engine.dicom.Notification. Errors name the field at fault, never its value."""

from __future__ import annotations

import json
import re
from typing import Any

from engine.core.component import Problem
from engine.core.errors import PermanentError
from engine.dicom.notification import Notification

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
GENERIC_EVENTS = ("study.stable", "study.available")
ORTHANC_CHANGES = {"StableStudy": "study.stable", "NewStudy": "study.available"}


class PayloadError(PermanentError):
    """A body that is not a usable notification. `key` names the field at fault (None: the body itself)."""

    def __init__(self, text: str, key: str | None = None, code: int = 102) -> None:
        super().__init__(text)
        self.key = key
        self.code = code  # HL7 table 0357, as the channel's Problem expects: 101 missing, 102 bad value

    def problem(self) -> Problem:
        return Problem(str(self), code=self.code)


def _missing(key: str) -> PayloadError:
    return PayloadError(f"missing field '{key}'", key, code=101)


def _text(data: dict[str, Any], key: str, where: str = "") -> str:
    """An optional string field ('' when absent or null)."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"field '{where}{key}' must be a string", where + key)
    return value.strip()


def _uid(data: dict[str, Any], key: str, where: str = "") -> str:
    # DICOM pads odd-length UIDs with NUL; senders copying raw values may keep it.
    uid = _text(data, key, where).rstrip("\x00 ")
    if not uid:
        raise _missing(where + key)
    if len(uid) > 64 or not _UID.match(uid):
        raise PayloadError(f"field '{where}{key}' is not a DICOM UID", where + key)
    return uid


def _object(data: dict[str, Any], key: str, required: bool) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise _missing(key)
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"field '{key}' must be an object", key)
    return value


def load_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise PayloadError("empty body")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:  # its message holds a position, never content
        raise PayloadError(f"body is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError):  # undecodable bytes, absurd numbers or nesting
        raise PayloadError("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    return data


def generic(data: dict[str, Any]) -> Notification:
    """{"event": "study.stable", "study_uid": ..., "accession" | "accessions": ..., "patient_id", "pacs_id"}."""
    event = data.get("event")
    if event is None:
        raise _missing("event")
    if event not in GENERIC_EVENTS:
        raise PayloadError(f"field 'event' must be one of {', '.join(GENERIC_EVENTS)}", "event")
    study_uid = _uid(data, "study_uid")
    accessions = [_text(data, "accession")]
    listed = data.get("accessions")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
            raise PayloadError("field 'accessions' must be a list of strings", "accessions")
        accessions += [a.strip() for a in listed]
    return Notification(
        event=event,
        study_uid=study_uid,
        source="webhook",
        accessions=tuple(dict.fromkeys(a for a in accessions if a)),
        patient_id=_text(data, "patient_id"),
        pacs_id=_text(data, "pacs_id"),
    )


def orthanc(data: dict[str, Any]) -> Notification:
    """{"ChangeType": "StableStudy", "ID": ..., "MainDicomTags": {...}, "PatientMainDicomTags": {...}}."""
    change = data.get("ChangeType")
    if change is None:
        raise _missing("ChangeType")
    if change not in ORTHANC_CHANGES:
        raise PayloadError(f"field 'ChangeType' must be one of {', '.join(ORTHANC_CHANGES)}", "ChangeType")
    study = _object(data, "MainDicomTags", required=True)
    patient = _object(data, "PatientMainDicomTags", required=False)
    accession = _text(study, "AccessionNumber", "MainDicomTags.")
    # OnStableStudy's own `tags` argument mixes patient tags in; accept a PatientID found there too.
    patient_id = _text(patient, "PatientID", "PatientMainDicomTags.") or _text(study, "PatientID", "MainDicomTags.")
    return Notification(
        event=ORTHANC_CHANGES[change],  # type: ignore[arg-type]
        study_uid=_uid(study, "StudyInstanceUID", "MainDicomTags."),
        source="webhook",
        accessions=(accession,) if accession else (),
        patient_id=patient_id,
        pacs_id=_text(data, "ID"),
    )


PARSERS = {"generic": generic, "orthanc": orthanc}


def parse(body: bytes, fmt: str) -> Notification:
    """The notification a body describes, or PayloadError naming what is wrong."""
    return PARSERS[fmt](load_json(body))
