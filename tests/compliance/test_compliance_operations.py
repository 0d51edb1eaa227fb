"""Items read from the audit log and the keys: chain verification, checkpoints, backups, restore tests,
retention, key escrow and KEK age, each against the time the report is made."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.compliance.operations import aead_self_test
from engine.core.clock import utcnow
from engine.runtime.context import Context, open_context
from engine.security import keyring
from engine.store.tables import AuditRow
from tests.compliance.conftest import cli, items, project_with

ENGINE = """\
node: {id: test-node}
keys: {source: file, file: keys/keyring.json, allow_dev_key: false}
listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18480}]
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = project_with(tmp_path / "p", ENGINE)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


@pytest.fixture
def ctx(root: Path) -> Iterator[Context]:
    context = open_context(root)
    yield context
    context.close()


def test_audit_chain_verified_signed_then_stale_then_broken(ctx: Context) -> None:
    ctx.audit.record("config.loaded", actor="service:test")
    ctx.audit.record("engine.started", actor="service:test")
    assert items(ctx)["audit-chain"].status == "attention"  # never signed
    ctx.checkpoint()
    now = utcnow()
    chain = items(ctx, now)["audit-chain"]
    assert chain.status == "pass" and chain.details["entries"] == 2 and chain.details["signed_checkpoints"] == 1
    stale = items(ctx, now + timedelta(hours=25))["audit-chain"]
    assert stale.status == "attention" and "over 24 h" in stale.why
    audit = AuditRow.__table__
    with ctx.db.begin() as conn:
        conn.execute(update(audit).where(audit.c.seq == 1).values(actor="service:someone-else"))
    found = items(ctx, now)
    assert found["audit-chain"].status == "fail"
    assert (
        found["audit-chain"].why == "audit chain verification failed: node test-node: entry seq 1 was altered "
        "(hash mismatch)"
    )
    assert found["integrity"].status == "fail" and "seq 1 was altered" in found["integrity"].why


def test_integrity_self_test_refuses_alterations(ctx: Context) -> None:
    assert aead_self_test(ctx.vault) == {
        "round_trip": True,
        "altered_ciphertext_refused": True,
        "ciphertext_moved_to_other_record_refused": True,
        "data_key_moved_to_other_record_refused": True,
    }
    assert items(ctx)["integrity"].status == "pass"


def test_backup_through_the_cli_passes_for_90_days(root: Path, tmp_path: Path) -> None:
    cli("backup", str(tmp_path / "b1"), "--root", str(root))
    ctx = open_context(root)
    try:
        now = utcnow()
        backup = items(ctx, now)["backups"]
        assert backup.status == "pass" and backup.details["backups_audited"] == 1
        assert backup.details["latest"]["store"] == "sqlite" and backup.details["latest"]["messages"] == 0
        old = items(ctx, now + timedelta(days=91))["backups"]
        assert old.status == "attention" and "over 90 days" in old.why
    finally:
        ctx.close()


def test_restore_test_from_an_attestation_or_an_audited_restore(ctx: Context, root: Path) -> None:
    now = utcnow()
    assert items(ctx, now)["restore-test"].status == "attention"
    day = (now - timedelta(days=10)).date().isoformat()
    cli("compliance", "attest", "restore-test", "--date", day, "--by", "Ops lead", "--evidence", "RT-7", "--root",
        str(root))  # fmt: skip
    found = items(ctx, now)["restore-test"]
    assert found.status == "pass" and found.why == f"last restore test {day}"
    assert items(ctx, now + timedelta(days=81))["restore-test"].status == "attention"  # 91 days after the test
    ctx.audit.record("store.restored", actor="user:ops")
    found = items(ctx, now + timedelta(days=81))["restore-test"]
    assert found.status == "pass" and found.details["last_restore_audited"] is not None
    assert items(ctx, now + timedelta(days=91))["restore-test"].status == "attention"


def test_retention_never_then_ran_then_failed_then_stale(root: Path, ctx: Context) -> None:
    now = utcnow()
    assert items(ctx, now)["retention"].status == "attention"
    ctx.audit.record("retention.purged", actor="service:retention", detail={"channel": "x", "messages": 0})
    assert items(ctx, now)["retention"].status == "pass"
    stale = items(ctx, now + timedelta(days=8))["retention"]
    assert stale.status == "attention" and "is the engine running?" in stale.why
    ctx.audit.record("retention.purged", actor="service:retention", outcome="failure")
    failed = items(ctx, utcnow())["retention"]
    assert failed.status == "attention" and "last retention run failed" in failed.why


def test_key_escrow_goes_stale_when_the_kek_is_rotated_after_it(root: Path, ctx: Context) -> None:
    assert items(ctx)["key-escrow"].status == "attention"
    ctx.audit.record("keys.exported", actor="user:ops")
    assert items(ctx)["key-escrow"].status == "pass"
    cli("keys", "rotate", "--root", str(root))
    ctx2 = open_context(root)  # the rotation changed the key file: read it again
    try:
        escrow = items(ctx2)["key-escrow"]
        assert escrow.status == "attention" and "rotated after the last escrow" in escrow.why
        cli("compliance", "attest", "key-escrow", "--date", utcnow().date().isoformat(), "--by", "CISO",
            "--evidence", "sealed envelope in safe 3", "--root", str(root))  # fmt: skip
        assert items(ctx2)["key-escrow"].status == "pass"
        at_rest = items(ctx2)["encryption-at-rest"]
        assert at_rest.details["kek_active_version"] == 2 and at_rest.details["rotations_audited"] == 1
    finally:
        ctx2.close()


def test_kek_older_than_a_year_needs_attention(ctx: Context) -> None:
    now = utcnow()
    assert items(ctx, now)["encryption-at-rest"].status == "pass"
    old = items(ctx, now + timedelta(days=400))["encryption-at-rest"]
    assert old.status == "attention" and "days old and it was never rotated" in old.why


def test_attestations_expire_after_a_year(root: Path, ctx: Context) -> None:
    cli("compliance", "attest", "risk-analysis", "--date", "2026-01-10", "--by", "Risk officer", "--evidence",
        "RA-2026", "--root", str(root))  # fmt: skip
    from datetime import UTC, datetime

    fresh = items(ctx, datetime(2026, 6, 1, tzinfo=UTC))["attestation-risk-analysis"]
    assert fresh.status == "pass" and fresh.why == "attested 2026-01-10 by Risk officer"
    late = items(ctx, datetime(2027, 2, 1, tzinfo=UTC))["attestation-risk-analysis"]
    assert late.status == "attention" and late.why == "attested 2026-01-10, over 365 days ago: renew it"
    assert late.details["latest"]["evidence"] == "RA-2026"
