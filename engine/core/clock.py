"""One source of time, so tests can reason about it and every timestamp is UTC."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds, the one text form of time the engine writes."""
    return (ts or utcnow()).astimezone(UTC).isoformat(timespec="microseconds")
