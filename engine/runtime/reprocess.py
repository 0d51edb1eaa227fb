"""Re-run stored messages through their channel as new messages (linked to the original and
audited), e.g. after a mapping fix or to resend a dead-lettered message. Works while the engine
runs in another process: the new messages' deliveries are queued in the store, which the running
engine's workers poll."""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.core.component import Inbound
from engine.hl7v2 import Hl7ParseError, Message
from engine.runtime.context import Context
from engine.runtime.engine import Engine


def decode(kind: str, raw: bytes, peer: str) -> Inbound:
    """Decode stored raw bytes the way their source did when they first arrived."""
    base = kind.split(" ", 1)[0]
    if base == "hl7v2":
        try:
            message = Message.parse(raw)
        except Hl7ParseError as exc:
            return Inbound(raw=raw, kind=base, peer=peer, decoded=exc)
        dedup = "|".join(v or "" for v in (message.sending_app, message.sending_facility, message.control_id))
        return Inbound(raw=raw, kind=base, peer=peer, decoded=message, dedup=dedup, type=message.message_type)
    if base == "record":
        record = json.loads(raw)
        return Inbound(raw=raw, kind=base, peer=peer, decoded=record, type=record.get("type"))
    return Inbound(raw=raw, kind=base, peer=peer)


@dataclass(frozen=True)
class Reprocessed:
    original: str
    new: str | None
    status: str


async def reprocess(ctx: Context, message_ids: list[str], actor: str) -> list[Reprocessed]:
    engine = Engine(ctx)
    channels = {c.config.name: c for c in ctx.project.channels}
    built: dict[str, object] = {}
    results = []
    for message_id in message_ids:
        view = ctx.messages.get(message_id)
        if view is None:
            raise LookupError(f"no message {message_id}")
        loaded = channels.get(view.channel)
        if loaded is None:
            results.append(Reprocessed(message_id, None, f"channel {view.channel} is not configured"))
            continue
        running = built.get(view.channel) or engine.build(loaded, ctx.project)
        built[view.channel] = running
        inbound = decode(view.kind, ctx.messages.read(message_id), peer="store")
        outcome = await running.channel.ingest(inbound, reprocess_of=message_id, actor=actor)  # type: ignore[attr-defined]
        results.append(Reprocessed(message_id, outcome.message_id, outcome.status))
    return results
