"""What sources and destinations exchange with the engine. Connectors see only these types,
never the runtime, so they stay independent of each other and of how channels are run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol

# An audit hook for connection-level events (refused peer, oversize frame): action, then the
# fields of engine.audit.log.AuditLog.event (actor, peer, outcome, detail, ...).
AuditHook = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Inbound:
    """One message as a source received it. `decoded` is the source's parse of it (an
    engine.hl7v2.Message for HL7) or the exception that parsing raised; `dedup` identifies the
    sender's message (e.g. sending app + facility + control id) when the protocol has such a key."""

    raw: bytes
    kind: str  # "hl7v2", "json", ...
    peer: str  # "127.0.0.1:5123" or the client certificate's CN; never patient data
    decoded: Any = None
    dedup: str | None = None
    type: str | None = None  # e.g. "ORM^O01", for acceptance rules and the message list
    sha256: str | None = None  # hex SHA-256 of raw, when the source already computed it
    # The raw bytes already sealed and written durably by the source (ComponentContext.prestore), as a
    # concurrent.futures.Future of the store's Prestored: large payloads are written while the source
    # parses them, instead of after. The channel waits for it before it commits the message.
    prestored: Any = None


OutcomeStatus = Literal["accepted", "duplicate", "filtered", "invalid", "refused", "unavailable"]


@dataclass(frozen=True)
class Problem:
    """Why a message was not accepted, in words fit for an ACK and a log: names, never values."""

    text: str
    code: int = 207  # HL7 table 0357; 207 = application internal error
    segment: str | None = None
    sequence: int | None = None
    field: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What the engine did with an Inbound, so a source can answer its peer.

    accepted / duplicate / filtered: durably stored and audited (ACK AA); invalid: stored for
    review, content is wrong (AE); refused: the channel does not take this message (AR);
    unavailable: the engine could not store it, the sender must retry (AR / CR, never AA)."""

    status: OutcomeStatus
    message_id: str | None = None
    problem: Problem | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)  # e.g. "control-id-reused"


Sink = Callable[[Inbound], Awaitable[Outcome]]


@dataclass(frozen=True)
class Outbound:
    message_id: str
    destination: str
    body: bytes
    kind: str


@dataclass(frozen=True)
class Delivered:
    response: bytes | None = None  # stored sealed as response:<destination>
    detail: str = ""  # non-PHI note for the message list (e.g. "AA")


class Source(Protocol):
    async def start(self, sink: Sink) -> list[str]:
        """Begin receiving; returns what it listens on, e.g. ["mllp://0.0.0.0:2575 (tls)"]."""
        ...

    async def stop(self) -> None: ...


class Destination(Protocol):
    async def send(self, message: Outbound) -> Delivered:
        """Deliver or raise RetryableError (try again later) / PermanentError (dead-letter it)."""
        ...

    async def close(self) -> None: ...


class Topics(Protocol):
    """The engine's internal topics, which connect channels and built-in stages to each other."""

    def subscribe(self, pattern: str, sink: Sink) -> None: ...

    async def publish(self, topic: str, inbound: Inbound) -> list[Outcome]: ...


class StateStore(Protocol):
    """A source's own small durable state (a feed position, an MPPS step), sealed at rest and kept
    per channel: it survives a restart. Values are bytes; a source encodes its own."""

    def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes) -> None: ...


@dataclass(frozen=True)
class ComponentContext:
    channel: str
    root: Path  # project root: relative paths in component configs are taken from here
    audit: AuditHook
    site_tz: tzinfo
    topics: Topics | None = None
    state: StateStore | None = None
    # How many instances of a study (by Study Instance UID) the engine holds; blocking, a quick
    # indexed query. Lets a notification source decide whether to retrieve a study from the PACS.
    held_instances: Callable[[str], int] | None = None
    # Seal and durably write a large raw payload now, in a worker thread (see Inbound.prestored); None
    # where the store keeps payloads inline.
    prestore: Callable[[bytes], Any] | None = None
