"""TOTP second factor (RFC 6238: 30-second steps, 6 digits, HMAC-SHA1, as every authenticator app does).

A code is accepted for the current step and one step either side (clock drift), and only for a step
later than the last one accepted for the user, so a code seen over someone's shoulder or in a log
cannot be used again. The secret is a secret: the store keeps it sealed under a data key of its own.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import pyotp

STEP = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one
ISSUER = "radbridge"


@dataclass(frozen=True)
class TotpCheck:
    outcome: Literal["ok", "wrong", "replayed"]
    counter: int | None = None  # the step matched (to record as the last one used)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def new_secret() -> str:
    """160 random bits in base32, the size RFC 4226 recommends for HMAC-SHA1."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    """The otpauth:// URI an authenticator app reads (shown once, at enrollment)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(name=username, issuer_name=issuer)


def counter(now: datetime) -> int:
    return int(now.timestamp()) // STEP


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).generate_otp(step)


def verify(secret: str, code: str | None, now: datetime, last_counter: int | None) -> TotpCheck:
    """Check a code against the steps around `now`; a step at or before `last_counter` is a replay."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return TotpCheck("wrong")
    current = counter(now)
    matched = None
    for step in range(current - WINDOW, current + WINDOW + 1):  # every step compared: no early exit
        if hmac.compare_digest(code_at(secret, step), code):
            matched = step
    if matched is None:
        return TotpCheck("wrong")
    if last_counter is not None and matched <= last_counter:
        return TotpCheck("replayed", matched)
    return TotpCheck("ok", matched)
