"""Evidence for §164.312(a)(1) access control and minimum necessary (§164.502(b)): the role access matrix
the engine enforces (engine.security.access), checked for consistency and for who may see PHI unmasked.

Users per role, TOTP for admins, lockout and break-glass use are items of their own, read from the
users store.
"""

from __future__ import annotations

from typing import Any

from engine.compliance.evidence import Evidence, Item
from engine.security.access import BREAK_GLASS_ROLES, MATRIX, PERMISSIONS, REVEAL, ROLES

# Roles that never need patient identity unmasked to do their work (minimum necessary).
NO_PHI_ROLES = ("admin", "auditor", "service")


def access_matrix(ev: Evidence) -> Item:
    title, cite = "Role-based access matrix", "§164.312(a)(1), §164.502(b)"
    details: dict[str, Any] = {
        "deny_by_default": "an unknown role or permission, or a disabled user, gets nothing",
        "roles": {
            role: {
                "permissions": sorted(MATRIX.get(role, frozenset())),
                "reveals_phi": bool(MATRIX.get(role, frozenset()) & REVEAL),
                "break_glass": role in BREAK_GLASS_ROLES,
            }
            for role in ROLES
        },
    }
    missing = [r for r in ROLES if r not in MATRIX]
    unknown = sorted({p for perms in MATRIX.values() for p in perms} - set(PERMISSIONS))
    if missing or unknown:
        why = f"matrix inconsistent: roles without entry {missing}, unknown permissions {unknown}"
        return Item("access-matrix", "access", cite, title, "fail", why, details)
    over = [r for r in NO_PHI_ROLES if MATRIX[r] & REVEAL]
    if over:
        why = f"roles that need no patient identity may reveal it: {', '.join(over)}"
        return Item("access-matrix", "access", cite, title, "attention", why, details)
    reveal = [r for r in ROLES if MATRIX[r] & REVEAL]
    why = (f"{len(ROLES)} roles, deny by default; PHI unmasked only for {', '.join(reveal)} "
           f"(others through audited, expiring break-glass)")  # fmt: skip
    return Item("access-matrix", "access", cite, title, "pass", why, details)
