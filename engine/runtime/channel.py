"""A channel's pipeline: source -> (filter) -> mapping -> destinations.

`Channel.ingest` is the sink a source calls for every message it receives. It decides everything
about the message first (duplicate? parseable? accepted? mapped into which records?), then writes
the message, its sealed parts, its delivery queue entries and its audit entry in one transaction,
and only then answers the source, which acknowledges its peer. A message that cannot be stored
gets `unavailable`, so the sender keeps it and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from engine.core.clock import utcnow
from engine.core.component import Inbound, Outcome, Problem
from engine.core.errors import PermanentError
from engine.hl7v2 import AckError, Message, build_ack
from engine.hl7v2.ack import new_ack_control_id
from engine.hl7v2.validate import validate_structure
from engine.runtime.context import Context
from engine.runtime.dedup import RecentMessages
from engine.store.writer import WriteItem

log = logging.getLogger("radbridge.channel")

# Turns a decoded message into what destinations receive (body) and the identifiers to index, or
# raises Refused / Invalid (or another PermanentError carrying `.code` from HL7 table 0357).
Transform = Callable[[Inbound], "Transformed"]


@dataclass(frozen=True)
class Transformed:
    body: bytes
    indexes: dict[str, str] = field(default_factory=dict)  # blind-index kind -> value (still clear here)
    # Rows a stage keeps beside the message (study assembly), committed in the message's own
    # transaction: called with the new message id once the message is known to be stored.
    writes: Callable[[str], WriteItem] | None = None


class Refused(PermanentError):
    """The channel does not take this message (type not accepted, unknown sender): ACK AR."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.text)
        self.problem = problem


class Invalid(PermanentError):
    """The message's content is wrong (unparseable, a required field missing): ACK AE, kept for review."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.text)
        self.problem = problem


@dataclass
class Channel:
    name: str
    ctx: Context
    destinations: list[str]
    transform: Transform | None = None
    accepts: Callable[[str | None], bool] | None = None  # the source's own type filter, if it has one
    application_ack: str | None = None  # destination label for HL7 application ACKs (MSH-16)
    strict: bool = False  # validate HL7 structure with hl7apy (slow; see engine.hl7v2.validate)
    recent: RecentMessages | None = None  # answers duplicate checks from memory where it can
    dedup_window: timedelta = timedelta(days=1)
    on_queued: Callable[[], None] = lambda: None  # wakes the delivery workers

    async def ingest(self, inbound: Inbound, *, reprocess_of: str | None = None, actor: str | None = None) -> Outcome:
        ctx = self.ctx
        actor = actor or f"peer:{inbound.peer}"
        flags: list[str] = []
        control_idx = ctx.index("control_id", f"{self.name}|{inbound.dedup}") if inbound.dedup else None
        content_mac = ctx.index.content(inbound.raw, inbound.sha256)
        if control_idx and self.dedup_window and reprocess_of is None:
            earlier = self.recent.get(control_idx) if self.recent is not None else None
            if earlier is None:
                earlier = ctx.messages.same_control(control_idx, utcnow() - self.dedup_window)
            for message_id, mac in earlier:
                if mac == content_mac:
                    await ctx.audit.arecord(
                        "message.duplicate", actor=actor, record_ids=[message_id],
                        indexes={"control_id": control_idx}, detail={"channel": self.name},
                    )  # fmt: skip
                    return Outcome("duplicate", message_id=message_id)
            if earlier:
                flags.append("control-id-reused")

        if self.strict or getattr(self.transform, "slow", False):  # hl7apy: milliseconds, off the event loop
            status, problem, transformed = await asyncio.to_thread(self._decide, inbound)
        else:
            status, problem, transformed = self._decide(inbound)
        outcome_status = {"queued": "accepted", "transformed": "accepted", "received": "accepted"}.get(status, status)
        destinations = self.destinations if status == "queued" else []
        indexes = {k: ctx.index(k, v) for k, v in (transformed.indexes if transformed else {}).items()}
        if control_idx:
            indexes["control_id"] = control_idx
        kind = f"{inbound.kind} {inbound.type}" if inbound.type else inbound.kind
        stored_status = {"invalid": "error", "refused": "error"}.get(status, status)
        prestored = None
        if inbound.prestored is not None and reprocess_of is None:
            try:  # sealed and written by the source while it parsed; durable before the commit below
                prestored = await asyncio.wrap_future(inbound.prestored)
            except Exception as exc:  # noqa: BLE001 - seal it here instead
                log.warning("channel %s: payload not written ahead (%s)", self.name, type(exc).__name__)
        message_id, item = ctx.messages.receive(
            self.name, kind, inbound.raw, indexes=indexes, destinations=destinations, status=stored_status,
            error=problem.text if problem else None, content_mac=content_mac,
            parts={"transformed": transformed.body} if transformed is not None else None, prestored=prestored,
        )  # fmt: skip
        if transformed is not None and transformed.writes is not None and status in ("queued", "transformed"):
            item.extend(transformed.writes(message_id))
        detail: dict[str, Any] = {"channel": self.name, "status": status, "type": inbound.type}
        if problem:
            detail["problem"] = problem.text
        if flags:
            detail["flags"] = flags
        if reprocess_of:
            detail["reprocess_of"] = reprocess_of
        item.audit.append(
            ctx.audit.event(
                "message.reprocessed" if reprocess_of else "message.received",
                actor=actor,
                outcome="success" if problem is None else "failure",
                record_ids=[message_id] + ([reprocess_of] if reprocess_of else []),
                indexes=indexes,
                detail=detail,
            )
        )
        ack = self._application_ack(inbound, outcome_status, problem)
        if ack is not None:  # queued with its own retries, in the same transaction as the message
            _, ack_item = ctx.messages.receive(
                self.name, "hl7v2 ACK", ack, direction="out", destinations=[self.application_ack], status="queued"
            )  # type: ignore[list-item]
            item.extend(ack_item)
        try:
            await ctx.writer.awrite(item)
        except Exception as exc:  # noqa: BLE001 - the sender must keep the message and retry
            log.error("channel %s: could not store a message: %s", self.name, type(exc).__name__)
            return Outcome("unavailable", problem=Problem("message could not be stored; retry later", code=207))
        if self.recent is not None and control_idx:
            self.recent.add(control_idx, message_id, content_mac)
        if destinations or ack is not None:
            self.on_queued()
        return Outcome(outcome_status, message_id=message_id, problem=problem, flags=tuple(flags))  # type: ignore[arg-type]

    def _application_ack(self, inbound: Inbound, status: str, problem: Problem | None) -> bytes | None:
        """HL7 enhanced mode: the application ACK the sender asked for in MSH-16, if any."""
        message = inbound.decoded
        if self.application_ack is None or not isinstance(message, Message):
            return None
        wanted = (message.get("MSH-16") or "").upper()
        ok = status in ("accepted", "duplicate", "filtered")
        if wanted not in ("AL", "ER", "SU") or (wanted == "ER" and ok) or (wanted == "SU" and not ok):
            return None
        code = "AA" if ok else "AE" if status == "invalid" else "AR"
        error = None
        if problem:
            error = AckError(problem.code, problem.text, problem.segment, problem.sequence, problem.field)
        return build_ack(message, code, control_id=new_ack_control_id(), error=error, now=utcnow())

    def _decide(self, inbound: Inbound) -> tuple[str, Problem | None, Transformed | None]:
        """(message status, problem, transformed) — pure, before anything is written."""
        if isinstance(inbound.decoded, Exception):
            return "invalid", _problem_of(inbound.decoded), None
        if self.strict and isinstance(inbound.decoded, Message):
            problem = validate_structure(inbound.raw.decode(inbound.decoded.codec, errors="replace"))
            if problem:
                return "invalid", Problem(f"message structure: {problem}", code=100), None
        if self.accepts is not None and not self.accepts(inbound.type):
            text = f"message type {inbound.type or 'unknown'} is not accepted by channel {self.name}"
            return "refused", Problem(text, code=200), None
        if self.transform is None:
            return ("queued" if self.destinations else "received"), None, None
        try:
            transformed = self.transform(inbound)
        except Refused as exc:
            return "refused", exc.problem, None
        except Invalid as exc:
            return "invalid", exc.problem, None
        except PermanentError as exc:
            return "invalid", _problem_of(exc), None
        if not transformed.body:
            return "filtered", None, transformed
        return ("queued" if self.destinations else "transformed"), None, transformed


def _problem_of(exc: Exception) -> Problem:
    """Errors from our parsers and mappings name fields and paths, never values; keep their codes."""
    make = getattr(exc, "problem", None)
    if callable(make):
        return make()
    return Problem(
        str(exc) or type(exc).__name__,
        code=int(getattr(exc, "code", 207) or 207),
        segment=getattr(exc, "segment", None),
        sequence=getattr(exc, "sequence", None),
        field=getattr(exc, "field", None),
    )
