"""One source of time, so tests can reason about it and every timestamp is UTC."""

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds, the one text form of time the engine writes."""
    return (ts or utcnow()).astimezone(timezone.utc).isoformat(timespec="microseconds")
