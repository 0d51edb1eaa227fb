"""Break-glass: a user states why and, with a fresh TOTP code, gets the PHI reveal permissions for a
fixed time (at most an hour). The grant is checked at every use, so it expires by itself; it is
audited with its reason, flagged on the dashboard and in the compliance report until reviewed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from engine.security.access import AccessDenied, may_break_glass

MAX_MINUTES = 60
MIN_REASON = 10  # characters: "emergency" alone says nothing a reviewer can check
PURPOSE = "BTG"  # HL7 v3 ActReason "break the glass", the audit entry's purpose of use


def check_request(role: str, reason: str, minutes: int) -> None:
    """Raise AccessDenied with a reason code when the request itself is not acceptable."""
    if not may_break_glass(role):
        raise AccessDenied("role_may_not_break_glass", "access denied: this role may not break the glass")
    if len(reason.strip()) < MIN_REASON:
        raise AccessDenied("reason_required", f"break-glass needs a stated reason ({MIN_REASON} characters or more)")
    if not 1 <= minutes <= MAX_MINUTES:
        raise AccessDenied("bad_duration", f"break-glass lasts 1 to {MAX_MINUTES} minutes")


def expires_at(now: datetime, minutes: int) -> datetime:
    return now + timedelta(minutes=minutes)


def in_force(expires: datetime, ended: datetime | None, now: datetime) -> bool:
    return ended is None and now < expires
