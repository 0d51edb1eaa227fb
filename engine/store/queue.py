"""Delivery queues: one per (channel, destination), kept in the deliveries table in message order.

A queue is worked head first (HL7 consumers expect messages in order): the oldest undelivered
message of a destination is retried until it is sent or dead-lettered, then the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, bindparam, select, update

from engine.core.clock import utcnow
from engine.store.tables import Delivery, Message
from engine.store.writer import WriteItem

_deliveries = Delivery.__table__
_messages = Message.__table__

_HEAD = (
    select(_deliveries.c.message_id, _deliveries.c.attempts, _deliveries.c.next_attempt_at)
    .where(
        _deliveries.c.channel == bindparam("channel"),
        _deliveries.c.destination == bindparam("destination"),
        _deliveries.c.status == "queued",
    )
    .order_by(_deliveries.c.message_id)
    .limit(1)
)
_UPDATE = (
    update(_deliveries)
    .where(and_(_deliveries.c.message_id == bindparam("d_message"), _deliveries.c.destination == bindparam("d_dest")))
    .values(
        status=bindparam("d_status"),
        attempts=bindparam("d_attempts"),
        next_attempt_at=bindparam("d_next"),
        last_error=bindparam("d_error"),
        updated_at=bindparam("d_now"),
    )
)
@dataclass(frozen=True)
class Due:
    message_id: str
    attempts: int
    next_attempt_at: datetime | None


def backoff(attempts: int, first_s: float, max_s: float) -> timedelta:
    """first_s, 2*first_s, 4*first_s ... capped at max_s."""
    return timedelta(seconds=min(max_s, first_s * 2 ** max(0, attempts - 1)))


class Queues:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self, channel: str, destination: str) -> Due | None:
        with self.engine.connect() as conn:
            row = conn.execute(_HEAD, {"channel": channel, "destination": destination}).first()
        return Due(row.message_id, row.attempts, row.next_attempt_at) if row else None

    def overall(self, message_id: str, pending: dict[str, str]) -> str:
        """The message's state once `pending` (destination -> new status) is applied."""
        with self.engine.connect() as conn:
            states = dict(
                conn.execute(
                    select(_deliveries.c.destination, _deliveries.c.status).where(
                        _deliveries.c.message_id == message_id
                    )
                ).all()
            )
        states.update(pending)
        values = set(states.values())
        if "dead" in values:
            return "dead"
        # "discarded": an operator gave a dead delivery up (engine.store.deadletters); it is settled
        # like "sent", and a message whose deliveries were all discarded was not sent, on purpose.
        if values and values <= {"sent", "discarded"}:
            return "sent" if "sent" in values else "filtered"
        return "queued"

    @staticmethod
    def mark(
        message_id: str, destination: str, status: str, attempts: int, error: str | None, next_at: datetime | None
    ) -> WriteItem:
        params = {
            "d_message": message_id, "d_dest": destination, "d_status": status, "d_attempts": attempts,
            "d_next": next_at, "d_error": error, "d_now": utcnow(),
        }  # fmt: skip
        return WriteItem(statements=[(_UPDATE, params)])
