"""The dead-letter queue: deliveries that gave up (status "dead"), and the two ways out of it.

- retry: back in its queue (status queued, attempts 0, due now). The queue is worked head first, so
  a retried delivery goes out before the newer ones of its destination, as it would have originally.
- discard: status "discarded", a delivery state of its own: the message is not sent to that
  destination, on purpose, and the delivery leaves the dead-letter queue (the message and its
  content stay until retention purges them, so it can still be reprocessed).

Both change a row only if it is still dead when the change commits (a guarded write): two operators
acting on the same dead letter at once get one change and one StaleWrite. The message's own status
is recomputed from all its deliveries (Queues.overall).

Dead letters are found through the messages' partial index on problem states (a message with a
dead delivery is itself dead), then their deliveries by primary key: no scan of the deliveries table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, bindparam, select, update

from engine.core.clock import utcnow
from engine.store.messages import SET_STATUS
from engine.store.queue import Queues
from engine.store.tables import Delivery, Message
from engine.store.writer import WriteItem

_deliveries = Delivery.__table__
_messages = Message.__table__

_WHERE_DEAD = and_(
    _deliveries.c.message_id == bindparam("d_message"),
    _deliveries.c.destination == bindparam("d_dest"),
    _deliveries.c.status == "dead",
)
_RETRY = (
    update(_deliveries)
    .where(_WHERE_DEAD)
    .values(status="queued", attempts=0, next_attempt_at=bindparam("d_now"), updated_at=bindparam("d_now"))
)
_DISCARD = update(_deliveries).where(_WHERE_DEAD).values(status="discarded", updated_at=bindparam("d_now"))


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    channel: str
    destination: str
    status: str  # "dead" in the queue; another state when looked up after a change
    kind: str  # the message's kind (e.g. "hl7v2 ORM^O01"), never content
    attempts: int
    last_error: str | None  # the connector's error text, written without PHI
    updated_at: datetime
    received_at: datetime


def _select() -> object:
    return select(
        _deliveries.c.message_id,
        _deliveries.c.channel,
        _deliveries.c.destination,
        _deliveries.c.status,
        _messages.c.kind,
        _deliveries.c.attempts,
        _deliveries.c.last_error,
        _deliveries.c.updated_at,
        _messages.c.received_at,
    ).join_from(_messages, _deliveries, _deliveries.c.message_id == _messages.c.id)


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queues = Queues(engine)

    def list(self, *, channel: str | None = None, destination: str | None = None, limit: int = 200) -> list[DeadLetter]:
        """Newest first."""
        query = (
            _select()  # type: ignore[attr-defined]
            .where(_messages.c.status == "dead", _deliveries.c.status == "dead")
            .order_by(_deliveries.c.message_id.desc(), _deliveries.c.destination)
            .limit(limit)
        )
        if channel:
            query = query.where(_messages.c.channel == channel)
        if destination:
            query = query.where(_deliveries.c.destination == destination)
        with self.engine.connect() as conn:
            return [DeadLetter(*row) for row in conn.execute(query)]

    def get(self, message_id: str, destination: str) -> DeadLetter | None:
        """One delivery, whatever its state."""
        query = _select().where(  # type: ignore[attr-defined]
            _deliveries.c.message_id == message_id, _deliveries.c.destination == destination
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DeadLetter(*row) if row else None

    def of_message(self, message_id: str) -> list[DeadLetter]:
        """Every delivery of one message, whatever its state."""
        query = _select().where(_deliveries.c.message_id == message_id)  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return [DeadLetter(*row) for row in conn.execute(query)]

    def retry(self, message_id: str, destination: str) -> WriteItem:
        """Put a dead delivery back at its place in the queue. Fails (StaleWrite) unless still dead."""
        return self._change(_RETRY, message_id, destination, "queued")

    def discard(self, message_id: str, destination: str) -> WriteItem:
        """Give a dead delivery up for good. Fails (StaleWrite) unless still dead."""
        return self._change(_DISCARD, message_id, destination, "discarded")

    def _change(self, statement: object, message_id: str, destination: str, to: str) -> WriteItem:
        now = utcnow()
        overall = self.queues.overall(message_id, {destination: to})
        error = None
        if overall == "dead":  # another destination of the message is still dead: keep its error
            with self.engine.connect() as conn:
                error = conn.execute(select(_messages.c.error).where(_messages.c.id == message_id)).scalar()
        elif to == "discarded":
            error = f"delivery to {destination} discarded by an operator"
        return WriteItem(
            guards=[(statement, {"d_message": message_id, "d_dest": destination, "d_now": now})],  # type: ignore[list-item]
            statements=[(SET_STATUS, {"m_id": message_id, "m_status": overall, "m_error": error, "m_now": now})],
        )
