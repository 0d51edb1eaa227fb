"""Web sessions: a random id in the cookie, only its SHA-256 on the server; idle and absolute timeouts;
a CSRF token per session.

The session id is 256 random bits, so a plain SHA-256 is enough at rest (see tokens.py): whoever reads
the table cannot sign in as anyone. The CSRF token is random too and kept in the session row, because
every rendered form needs it; it is worth nothing without the session cookie, and it is compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from engine.config.auth import SessionPolicy


@dataclass(frozen=True)
class NewSession:
    session_id: str  # for the cookie only
    id_hash: str  # what the store keeps
    csrf_token: str


def hash_id(session_id: str) -> str:
    return hashlib.sha256(f"radbridge-session/v1|{session_id}".encode()).hexdigest()


def new_session() -> NewSession:
    session_id = secrets.token_urlsafe(32)
    return NewSession(session_id, hash_id(session_id), secrets.token_urlsafe(32))


def csrf_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an absent or empty token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def state(
    created_at: datetime, last_seen_at: datetime, now: datetime, policy: SessionPolicy
) -> Literal["active", "idle_timeout", "absolute_timeout"]:
    if now >= created_at + timedelta(hours=policy.absolute_hours):
        return "absolute_timeout"
    if now >= last_seen_at + timedelta(minutes=policy.idle_minutes):
        return "idle_timeout"
    return "active"


def needs_touch(last_seen_at: datetime, now: datetime, policy: SessionPolicy) -> bool:
    return now - last_seen_at >= timedelta(seconds=policy.touch_seconds)
