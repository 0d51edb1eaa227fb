"""IAN and MPPS SCP: what the PACS and the modalities announce, turned into engine Notifications.

- Instance Availability Notification (N-CREATE, 1.2.840.10008.5.1.4.33): one Notification
  "instances.available" per IAN, with the study, the accessions of its Referenced Request Sequence
  and every referenced SOP instance.
- Modality Performed Procedure Step (N-CREATE "IN PROGRESS", then N-SET): the facts needed later
  (study, accessions, patient id, referenced instances) are kept in the channel's sealed state store
  under "mpps/" + SHA-256 of the MPPS SOP instance UID (the UID never sits in clear), so a step begun
  before a restart completes after it. N-SET "COMPLETED" emits "procedure.completed"; "DISCONTINUED"
  is audited (procedure.discontinued) and nothing is emitted.

Statuses (PS3.7 10.1): accepted/duplicate/filtered 0x0000; invalid 0x0110 (processing failure);
refused 0x0124 (not authorized); unavailable or no answer 0x0213 (resource limitation, retry);
a missing Type 1 attribute 0x0120; a bad PerformedProcedureStepStatus 0x0106; an N-CREATE for a
known step 0x0111; an N-SET for an unknown one 0x0112; an N-SET after COMPLETED/DISCONTINUED 0x0110.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.events import Event
from pynetdicom.sop_class import InstanceAvailabilityNotification, ModalityPerformedProcedureStep

from engine.core.component import Inbound
from engine.dicom import Notification

if TYPE_CHECKING:
    from engine.connectors.dicom.scp import DicomSource, _Conn

log = logging.getLogger("radbridge.dicom")
NOTIFY_STATUS = {
    "accepted": 0x0000, "duplicate": 0x0000, "filtered": 0x0000,
    "invalid": 0x0110, "refused": 0x0124, "unavailable": 0x0213,
}  # fmt: skip
_FINAL = ("COMPLETED", "DISCONTINUED")
Reply = tuple[int, Dataset | None]


def state_name(mpps_uid: str) -> str:
    """The state-store name of one MPPS step: a digest, so the UID is never stored in clear."""
    return "mpps/" + hashlib.sha256(mpps_uid.encode()).hexdigest()


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


class NotificationScp:
    """N-CREATE / N-SET handlers bound by DicomSource (they run in association threads)."""

    def __init__(self, source: DicomSource) -> None:
        self.source = source
        self._lock = threading.Lock()  # one MPPS step is read and written at a time

    def on_create(self, event: Event) -> Reply:
        return self._busy(event, self._create)

    def on_set(self, event: Event) -> Reply:
        return self._busy(event, self._set)

    def _busy(self, event: Event, handler: Any) -> Reply:
        conn = self.source.conn(event.assoc)
        conn.busy += 1
        try:
            return handler(conn, event)
        except Exception as exc:  # noqa: BLE001 - e.g. the state store is down: answered, and the SCU retries
            log.error("dicom %s assoc %d: notification failed (%s)", self._channel, conn.id, type(exc).__name__)
            return 0x0213, None
        finally:
            conn.busy -= 1

    @property
    def _channel(self) -> str:
        return self.source.ctx.channel

    def _emit(self, conn: _Conn, notification: Notification, dedup: str) -> int:
        inbound = Inbound(raw=notification.to_json(), kind="notification", peer=conn.peer, decoded=notification,
                          dedup=dedup, type=notification.event)  # fmt: skip
        outcome = self.source.deliver(inbound, conn.id)
        status = NOTIFY_STATUS["unavailable"] if outcome is None else NOTIFY_STATUS[outcome.status]
        log.info("dicom %s assoc %d: %s from %s, 0x%04X", self._channel, conn.id, notification.event,
                 notification.source, status)  # fmt: skip
        return status

    def _refuse(self, conn: _Conn, status: int, what: str) -> Reply:
        log.warning("dicom %s assoc %d: %s, 0x%04X", self._channel, conn.id, what, status)
        return status, None

    def _create(self, conn: _Conn, event: Event) -> Reply:
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            attributes = event.attribute_list
        except Exception:  # noqa: BLE001 - whatever pydicom raises on bytes it cannot decode
            return self._refuse(conn, 0x0110, "N-CREATE attribute list cannot be decoded")
        instance_uid = str(event.request.AffectedSOPInstanceUID or "")
        reply = Dataset()
        if not instance_uid:  # the SCU leaves it to us (PS3.7 10.1.5.1.4)
            instance_uid = reply.AffectedSOPInstanceUID = generate_uid()
        if sop_class == InstanceAvailabilityNotification:
            status = self._ian(conn, attributes, instance_uid)
        elif sop_class == ModalityPerformedProcedureStep:
            status = self._mpps_create(conn, attributes, instance_uid)
        else:
            return self._refuse(conn, 0x0122, "N-CREATE of an unsupported SOP class")
        return status, (reply if status == 0 else None)

    # -- IAN

    def _ian(self, conn: _Conn, ds: Dataset, instance_uid: str) -> int:
        study = _text(ds, "StudyInstanceUID")
        if not study:
            return self._refuse(conn, 0x0120, "IAN without StudyInstanceUID")[0]
        accessions = _unique(_text(item, "AccessionNumber") for item in ds.get("ReferencedRequestSequence") or ())
        uids = _unique(_text(sop, "ReferencedSOPInstanceUID")
                       for series in ds.get("ReferencedSeriesSequence") or ()
                       for sop in series.get("ReferencedSOPSequence") or ())  # fmt: skip
        notification = Notification("instances.available", study, "ian", accessions=tuple(accessions),
                                    sop_instance_uids=tuple(uids))  # fmt: skip
        return self._emit(conn, notification, instance_uid)

    # -- MPPS

    def _mpps_create(self, conn: _Conn, ds: Dataset, instance_uid: str) -> int:
        if _text(ds, "PerformedProcedureStepStatus").upper() != "IN PROGRESS":
            return self._refuse(conn, 0x0106, "MPPS N-CREATE not IN PROGRESS")[0]
        steps = ds.get("ScheduledStepAttributesSequence") or ()
        studies = _unique(_text(step, "StudyInstanceUID") for step in steps)
        if not studies:
            return self._refuse(conn, 0x0120, "MPPS N-CREATE without a scheduled step's StudyInstanceUID")[0]
        step = {
            "status": "IN PROGRESS",
            "study_uid": studies[0],
            "accessions": _unique(_text(s, "AccessionNumber") for s in steps),
            "patient_id": _text(ds, "PatientID"),
            "sop_instance_uids": _performed_instances(ds),
        }
        name = state_name(instance_uid)
        with self._lock:
            if self._get(name) is not None:
                return self._refuse(conn, 0x0111, "MPPS N-CREATE for a step already known")[0]
            self._put(name, step)
        log.info("dicom %s assoc %d: MPPS step begun", self._channel, conn.id)
        return 0x0000

    def _set(self, conn: _Conn, event: Event) -> Reply:
        if str(event.request.RequestedSOPClassUID) != ModalityPerformedProcedureStep:
            return self._refuse(conn, 0x0122, "N-SET of an unsupported SOP class")
        uid = str(event.request.RequestedSOPInstanceUID or "")
        try:
            changes = event.modification_list
        except Exception:  # noqa: BLE001 - whatever pydicom raises on bytes it cannot decode
            return self._refuse(conn, 0x0110, "N-SET modification list cannot be decoded")
        name = state_name(uid)
        with self._lock:
            step = self._get(name)
            if step is None:
                return self._refuse(conn, 0x0112, "MPPS N-SET for an unknown step")
            if step["status"] in _FINAL:
                return self._refuse(conn, 0x0110, f"MPPS N-SET after {step['status']}")
            new = _text(changes, "PerformedProcedureStepStatus").upper() or step["status"]
            if new not in ("IN PROGRESS", *_FINAL):
                return self._refuse(conn, 0x0106, "MPPS N-SET with an unknown PerformedProcedureStepStatus")
            step["status"] = new
            step["sop_instance_uids"] = _unique([*step["sop_instance_uids"], *_performed_instances(changes)])
            if new == "COMPLETED":
                notification = Notification(
                    "procedure.completed", step["study_uid"], "mpps", accessions=tuple(step["accessions"]),
                    patient_id=step["patient_id"], sop_instance_uids=tuple(step["sop_instance_uids"]),
                )  # fmt: skip
                status = self._emit(conn, notification, f"{uid}#completed")
                if status != 0:
                    return status, None  # the step stays open: the SCU's retry completes it
            elif new == "DISCONTINUED":
                log.info("dicom %s assoc %d: MPPS step discontinued", self._channel, conn.id)
                self.source.audit("procedure.discontinued", conn, "success", source="mpps")
            self._put(name, step)
        return 0x0000, Dataset()

    def _get(self, name: str) -> dict[str, Any] | None:
        state = self.source.ctx.state
        assert state is not None  # DicomSource.start refuses mpps without a state store
        raw = state.get(name)
        return None if raw is None else json.loads(raw)

    def _put(self, name: str, step: dict[str, Any]) -> None:
        state = self.source.ctx.state
        assert state is not None
        value = json.dumps(step, sort_keys=True, separators=(",", ":")).encode()
        self.source.run(state.put(name, value), self.source.config.sink_timeout_s)


def _performed_instances(ds: Dataset) -> list[str]:
    """SOP instance UIDs an MPPS lists under PerformedSeriesSequence (images and non-image objects)."""
    found = []
    for series in ds.get("PerformedSeriesSequence") or ():
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            found += [_text(item, "ReferencedSOPInstanceUID") for item in series.get(keyword) or ()]
    return _unique(found)
