"""API tokens for services: `rb_<id>_<secret>`, shown once, stored as a SHA-256 digest.

The id (64 random bits, hex) finds the row and may appear in the audit log; the secret is 256 random
bits. A slow hash (argon2) protects passwords because people pick guessable ones; a 256-bit random
secret cannot be guessed, so a single SHA-256 is as safe against a stolen table and keeps checking a
token cheap enough to do on every request. The digest covers the id too, so a digest copied onto
another token's row does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from engine.security.access import MATRIX, PERMISSIONS

PREFIX = "rb"
_TOKEN = re.compile(r"^rb_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewToken:
    token_id: str
    token: str  # the only time the secret exists in clear: hand it over, never store it
    digest: str


def digest(token_id: str, secret: str) -> str:
    return hashlib.sha256(f"radbridge-token/v1|{token_id}|{secret}".encode()).hexdigest()


def issue() -> NewToken:
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return NewToken(token_id, f"{PREFIX}_{token_id}_{secret}", digest(token_id, secret))


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret), or None when the text is not shaped like a radbridge token."""
    found = _TOKEN.match(token.strip())
    return (found.group(1), found.group(2)) if found else None


def matches(stored_digest: str, token_id: str, secret: str) -> bool:
    return hmac.compare_digest(stored_digest, digest(token_id, secret))


def scope_problems(role: str, scopes: list[str] | frozenset[str]) -> list[str]:
    """Scopes a token of this role may not carry: unknown permissions or ones the role lacks."""
    granted = MATRIX.get(role, frozenset())
    return sorted(s for s in scopes if s not in PERMISSIONS or s not in granted)
