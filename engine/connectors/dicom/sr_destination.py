"""The DICOM SR destination (kind `dicom-sr`): an AI result record in, a Comprehensive SR (TID 1500,
engine.dicom.sr) filed into the source study out, C-STOREd by the Storage SCU of the `dicom`
destination (the same association handling, TLS, timeouts and failure policy; composed, not copied).

Corrections and withdrawals are SR documents of their own that name their predecessor
(PredecessorDocumentsSequence); which statuses go out at all is the channel's choice (`release`).
The SR sent is returned as the delivery's response, so the message keeps it sealed for audit.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import Field, ValidationError

from engine.connectors.dicom.config import DicomDestinationConfig
from engine.connectors.dicom.scu import DicomDestination
from engine.core.component import ComponentContext, Delivered, Outbound
from engine.core.errors import PermanentError
from engine.core.records import InferenceResult
from engine.core.registry import register
from engine.dicom.sr import build_sr, to_part10

Status = Literal["preliminary", "corrected", "withdrawn"]


class DicomSrDestinationConfig(DicomDestinationConfig):
    uid_root: str | None = Field(
        None,
        pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
        max_length=40,
        description="Your organisation's UID root (at most 40 characters) under which the SR's series, instance, "
        "device and tracking UIDs are derived; without it they are name-based UUIDs (2.25.<uuid5>). Derived, not "
        "random: a resend of the same revision is the same instance, and a correction names its predecessor.",
    )
    release: list[Status] = Field(
        default_factory=lambda: ["preliminary", "corrected", "withdrawn"],
        min_length=1,
        description="Which result statuses are sent: preliminary (first AI result), corrected (a new SR naming "
        "the one it replaces), withdrawn (an SR saying the AI result was withdrawn, naming the one before). "
        "Records of other statuses are passed over (delivered, not sent).",
    )


@register("destination", "dicom-sr")
class DicomSrDestination:
    """Sends each `result` record (Outbound.body: the record JSON {"type": "result", "topic", "fields"})
    as a Comprehensive SR to a Storage SCP, usually the PACS that holds the study.

    Delivered(detail="SR <status> revision <n> stored (C-STORE 0x0000)", response=the SR's Part 10
    bytes). A body that is not a result record, or a result that cannot be filed into its study (no
    study UID), -> PermanentError naming fields, never values; shadow results and statuses outside
    `release` -> Delivered without sending. Network and peer failures as the `dicom` destination.
    """

    Config = DicomSrDestinationConfig

    def __init__(self, config: DicomSrDestinationConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        scu = DicomDestinationConfig(**{name: getattr(config, name) for name in DicomDestinationConfig.model_fields})
        self.scu = DicomDestination(scu, ctx)

    async def send(self, message: Outbound) -> Delivered:
        record = self._record(message)
        if not record.clinical:  # the outputs stage withholds them; a misrouted one must not reach the PACS
            return Delivered(detail="not sent: shadow result")
        if record.status not in self.config.release:
            return Delivered(detail=f"not sent: status {record.status} is not released")
        try:
            sr = build_sr(record, uid_root=self.config.uid_root, now=datetime.now(self.ctx.site_tz))
        except ValueError as exc:  # texts name fields only
            raise PermanentError(f"dicom-sr: message {message.message_id}: {exc}") from None
        body = to_part10(sr)
        stored = await self.scu.send(Outbound(message.message_id, message.destination, body, "dicom"))
        return Delivered(
            response=body, detail=f"SR {record.status} revision {record.revision} stored ({stored.detail})"
        )

    async def close(self) -> None:
        await self.scu.close()

    @staticmethod
    def _record(message: Outbound) -> InferenceResult:
        mid = message.message_id
        try:
            body = json.loads(message.body)
        except (ValueError, UnicodeDecodeError):
            raise PermanentError(f"dicom-sr: message {mid} is not a JSON record") from None
        if not isinstance(body, dict) or body.get("type") != "result" or not isinstance(body.get("fields"), dict):
            raise PermanentError(f"dicom-sr: message {mid} is not a result record")
        try:
            return InferenceResult.model_validate(body["fields"])
        except ValidationError as exc:  # its str() would quote the values
            where = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
            raise PermanentError(f"dicom-sr: message {mid}: result fields not valid: {', '.join(where)}") from None
