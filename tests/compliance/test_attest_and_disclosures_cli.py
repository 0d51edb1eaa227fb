"""`radbridge compliance attest` and `radbridge disclosures`: what they store, print, refuse and audit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.runtime.context import open_context
from engine.store.tables import Attestation, AuditRow, Disclosure
from engine.store.writer import WriteItem
from tests import phi
from tests.compliance.conftest import cli

OTHER_MRN = "MRN-TEST-0042"


def _audit(root: Path, action: str) -> list[tuple[object, dict | None]]:  # type: ignore[type-arg]
    ctx = open_context(root)
    try:
        table = AuditRow.__table__
        with ctx.db.connect() as conn:
            rows = conn.execute(select(table).where(table.c.action == action).order_by(table.c.seq)).all()
        return [(r, ctx.audit.open_detail(r.id, r.detail)) for r in rows]
    finally:
        ctx.close()


def test_attest_records_and_audits(fresh_file: Path) -> None:
    result = cli("compliance", "attest", "baa", "--date", "2026-03-01", "--by", "Pat Privacy (CISO)",
                 "--evidence", "https://dms.example.test/baa/2026", "--root", str(fresh_file))  # fmt: skip
    assert result.output.startswith("attested baa on 2026-03-01 by Pat Privacy (CISO) (id ")
    ctx = open_context(fresh_file)
    try:
        with ctx.db.connect() as conn:
            [row] = conn.execute(select(Attestation.__table__)).all()
    finally:
        ctx.close()
    assert (row.item, row.attested_on.isoformat(), row.attested_by, row.evidence) == (
        "baa",
        "2026-03-01",
        "Pat Privacy (CISO)",
        "https://dms.example.test/baa/2026",
    )
    [(entry, detail)] = _audit(fresh_file, "compliance.attested")
    assert entry.actor.startswith("user:") and json.loads(entry.record_ids) == [row.id]
    assert detail == {"item": "baa", "attested_on": "2026-03-01", "by": "Pat Privacy (CISO)"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bba", "--date", "2026-03-01"], "unknown item 'bba'; one of: baa, breach-notification"),
        (["baa", "--date", "01/03/2026"], "--date must be a day as YYYY-MM-DD, got '01/03/2026'"),
        (["baa", "--date", "2026-3-1"], "--date must be a day as YYYY-MM-DD"),
        (["baa", "--date", (utcnow() + timedelta(days=2)).date().isoformat()], "is in the future"),
    ],
)
def test_attest_refuses_bad_input(fresh_file: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["compliance", "attest", *args, "--by", "X", "--evidence", "Y",
                                      "--root", str(fresh_file)])  # fmt: skip
    assert result.exit_code == 1 and message in result.output
    ctx = open_context(fresh_file)
    try:
        with ctx.db.connect() as conn:
            assert conn.execute(select(Attestation.__table__)).all() == []
    finally:
        ctx.close()


def _disclose(root: Path, mrn: str, recipient: str, at: datetime, purpose: str = "inference",
              method: str = "safe-harbor", items: int = 1) -> str:  # fmt: skip
    ctx = open_context(root)
    try:
        row = {"id": new_id(), "patient_idx": ctx.index("mrn", mrn), "recipient": recipient, "purpose": purpose,
               "method": method, "study_id": None, "job_id": None, "items": items, "at": at}  # fmt: skip
        ctx.writer.write(WriteItem(inserts=[(Disclosure.__table__, row)]))
        return row["id"]
    finally:
        ctx.close()


def test_disclosures_lists_the_patients_rows_and_never_the_mrn(fresh_file: Path) -> None:
    first = _disclose(
        fresh_file, phi.MRN, "cxr@2024.3 models.example.test", datetime(2026, 2, 3, 8, 15, tzinfo=UTC), items=12
    )
    at = datetime(2026, 4, 9, 17, 0, tzinfo=UTC)
    second = _disclose(fresh_file, phi.MRN, "research export", at, "research export", "limited-data-set", 40)
    _disclose(fresh_file, OTHER_MRN, "someone else's vendor", datetime(2026, 3, 1, tzinfo=UTC))
    result = cli("disclosures", phi.MRN, "--reason", "patient request", "--root", str(fresh_file))
    assert result.output.splitlines() == [
        "2026-02-03 08:15Z  recipient=cxr@2024.3 models.example.test  purpose=inference  method=safe-harbor  items=12",
        "2026-04-09 17:00Z  recipient=research export  purpose=research export  method=limited-data-set  items=40",
        "2 disclosure(s) recorded for this patient",
    ]
    assert phi.leaks_in_bytes(result.output.encode()) == []
    [(entry, detail)] = _audit(fresh_file, "disclosure.viewed")
    assert entry.purpose == "other" and json.loads(entry.record_ids) == [first, second]
    assert detail == {"disclosures": 2, "purpose_text": "patient request"}  # free text only sealed
    ctx = open_context(fresh_file)
    try:
        assert json.loads(entry.indexes) == {"mrn": ctx.index("mrn", phi.MRN)}
    finally:
        ctx.close()
    assert phi.MRN not in entry.indexes and phi.MRN not in entry.record_ids


def test_disclosures_for_a_patient_without_any(fresh_file: Path) -> None:
    result = cli("disclosures", OTHER_MRN, "--reason", "audit", "--root", str(fresh_file))
    assert result.output == "0 disclosure(s) recorded for this patient\n"
    assert OTHER_MRN not in result.output
    assert len(_audit(fresh_file, "disclosure.viewed")) == 1


def test_disclosures_needs_a_reason(fresh_file: Path) -> None:
    result = CliRunner().invoke(app, ["disclosures", phi.MRN, "--root", str(fresh_file)])
    assert result.exit_code == 2 and "--reason" in result.output
