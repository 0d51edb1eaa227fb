"""The access matrix: docs/access.md and engine/security/access.py say the same, cell by cell; deny by
default; tokens carry their scopes only; break-glass adds the reveal permissions until it expires."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.security import access
from engine.security.access import (
    BREAK_GLASS_GRANTS,
    MATRIX,
    PERMISSIONS,
    ROLES,
    AccessDenied,
    Principal,
    allowed,
    mask,
    permissions,
    require,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "access.md"
NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
MARKS = {"✓": True, "·": False}


def _table(marker: str) -> tuple[list[str], list[list[str]]]:
    """The markdown table right after `<!-- matrix: marker -->`: header cells and body rows."""
    text = DOC.read_text()
    start = text.index(f"<!-- matrix: {marker} -->")
    lines = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert re.fullmatch(r"[-: |]+", "|".join(lines[1])), "second line is the header rule"
    return lines[0], lines[2:]


def doc_matrix() -> dict[tuple[str, str], bool]:
    header, rows = _table("roles x permissions")
    assert header[0] == "permission" and header[-1] == "what it allows"
    roles = header[1:-1]
    cells = {}
    for row in rows:
        permission = row[0].strip("`")
        for role, mark in zip(roles, row[1:-1], strict=True):
            assert mark in MARKS, f"{permission}/{role}: cell {mark!r} is neither ✓ nor ·"
            cells[(role, permission)] = MARKS[mark]
    return cells


DOC_CELLS = doc_matrix()


def test_doc_matrix_equals_code_matrix() -> None:
    header, rows = _table("roles x permissions")
    assert tuple(header[1:-1]) == ROLES
    assert [r[0].strip("`") for r in rows] == list(PERMISSIONS)
    assert {r[0].strip("`"): r[-1] for r in rows} == PERMISSIONS  # the descriptions too
    code = {(role, p): p in MATRIX[role] for role in ROLES for p in PERMISSIONS}
    assert DOC_CELLS == code


@pytest.mark.parametrize(("role", "permission"), sorted(DOC_CELLS))
def test_every_decision_matches_the_doc(role: str, permission: str) -> None:
    assert allowed(role, permission) is DOC_CELLS[(role, permission)]
    person = Principal("someone", role, "session")
    expected = DOC_CELLS[(role, permission)] and role != "service"  # a service acts through tokens only
    assert allowed(person, permission, NOW) is expected


def test_break_glass_table_equals_code() -> None:
    header, rows = _table("break-glass")
    assert header == ["role", "may break the glass"]
    doc = {r[0].strip("`"): MARKS[r[1]] for r in rows}
    assert doc == {role: access.may_break_glass(role) for role in ROLES}
    assert BREAK_GLASS_GRANTS == {"phi.reveal", "messages.reveal_phi"}


def test_deny_by_default() -> None:
    assert allowed("superuser", "channels.view") is False
    assert allowed("admin", "channels.delete") is False
    assert allowed("admin", "") is False
    assert permissions("nobody") == frozenset()
    assert allowed(Principal("x", "nobody", "session"), "channels.view", NOW) is False
    with pytest.raises(AccessDenied) as denied:
        require("technologist", "users.manage")
    assert denied.value.reason == "not_permitted"
    require("admin", "users.manage")


def test_intent_of_the_matrix() -> None:
    assert allowed("radiologist", "phi.reveal") and allowed("radiologist", "worklist.view")
    for reveal in ("phi.reveal", "messages.reveal_phi"):
        assert not allowed("auditor", reveal)
        assert not allowed("admin", reveal)  # admins run the engine; patient data only through break-glass
    assert allowed("auditor", "audit.view") and allowed("auditor", "audit.verify")
    admin_pages = [p for p in PERMISSIONS if p.split(".")[0] in ("channels", "messages", "users", "keys", "audit",
                                                                  "models", "dead_letters", "compliance")]
    assert admin_pages and not any(allowed("technologist", p) for p in admin_pages)
    assert allowed("integration_analyst", "messages.reveal_phi") and not allowed("integration_analyst", "phi.reveal")


def test_token_principal_has_only_its_scopes() -> None:
    token = Principal("pacs", "service", "token", scopes=frozenset({"studies.view", "users.manage"}), token_id="ab")
    assert allowed(token, "studies.view", NOW)
    assert not allowed(token, "jobs.view", NOW)  # the role would allow it; the token does not carry it
    assert not allowed(token, "users.manage", NOW)  # carried, but beyond the role
    assert token.actor == "token:ab"
    elevated = Principal("r", "radiologist", "token", scopes=frozenset({"studies.view"}),
                         break_glass_until=NOW + timedelta(minutes=5))  # fmt: skip
    assert not allowed(elevated, "messages.reveal_phi", NOW)  # tokens are never elevated


def test_break_glass_adds_reveal_until_it_expires() -> None:
    until = NOW + timedelta(minutes=30)
    tech = Principal("tina", "technologist", "session", break_glass_until=until, break_glass_id="g1")
    assert not allowed("technologist", "phi.reveal")
    assert allowed(tech, "phi.reveal", NOW) and allowed(tech, "messages.reveal_phi", NOW)
    assert allowed(tech, "phi.reveal", until - timedelta(seconds=1))
    assert not allowed(tech, "phi.reveal", until)  # expired by itself
    assert not allowed(tech, "phi.reveal")  # no time given: no grant counts
    assert not allowed(tech, "users.manage", NOW)  # only the reveal permissions, never a view
    auditor = Principal("audrey", "auditor", "session", break_glass_until=until)
    assert not allowed(auditor, "phi.reveal", NOW)  # the auditor never sees unmasked PHI


def test_mask() -> None:
    assert mask("FAKEPATIENT^ZELDAQUINN", reveal=False) == "•••••"
    assert mask("X", reveal=False) == mask("a much longer value", reveal=False)
    assert mask("FAKEPATIENT^ZELDAQUINN", reveal=True) == "FAKEPATIENT^ZELDAQUINN"
    assert mask(None, reveal=True) == ""
