"""Local users: username rules, the authentication policy (lockout, who needs TOTP) and refusals.

The persistence lives in engine/store/users.py; this module holds what needs no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from engine.core.errors import PermanentError
from engine.security.access import ROLES

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")

# Why a sign-in or token was refused: audit detail codes (and what the web layer maps to a message).
REFUSALS = {
    "unknown_user": "no such user",
    "disabled": "the user is disabled",
    "locked": "locked out after repeated failures",
    "bad_password": "wrong password",
    "no_password": "the account signs in with tokens only",
    "totp_required": "a TOTP code is required",
    "totp_not_enrolled": "the role requires TOTP and none is enrolled",
    "bad_totp": "wrong TOTP code",
    "totp_replayed": "that TOTP code was already used",
    "malformed": "not a radbridge token",
    "unknown_token": "no such token",
    "revoked": "the token is revoked",
    "expired": "the token or session has expired",
    "idle_timeout": "the session was idle too long",
    "absolute_timeout": "the session reached its maximum age",
    "ended": "the session was ended",
    "unknown_session": "no such session",
    "role_changed": "the owner's role no longer allows any of the token's scopes",
}


@dataclass(frozen=True)
class Refusal:
    """A refused sign-in, token or session: a REFUSALS code, and until when when locked out."""

    reason: str
    locked_until: datetime | None = None

    @property
    def message(self) -> str:
        return REFUSALS.get(self.reason, self.reason)


def check_username(username: str) -> str:
    """Lower-case letters, digits, dot, dash, underscore; 2 to 64 characters, starting with a letter."""
    name = username.strip()
    if not _USERNAME.match(name):
        raise PermanentError(
            "a username is 2-64 characters: lower-case letters, digits, '.', '-' or '_', starting with a letter"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise PermanentError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    return role
