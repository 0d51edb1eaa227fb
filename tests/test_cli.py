"""The CLI through typer's runner: one-line errors, exit codes, and no content without --decrypt."""

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.runtime.context import open_context
from engine.store.tables import AuditRow
from tests import phi

runner = CliRunner()


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


def _store_orm(project: Path) -> str:
    ctx = open_context(project)
    try:
        message_id, item = ctx.messages.receive(
            "ris-orders",
            "hl7v2 ORM^O01",
            phi.ORM.encode(),
            indexes={"accession": ctx.index("accession", phi.ACCESSION), "mrn": ctx.index("mrn", phi.MRN)},
        )
        item.audit.append(ctx.audit.event("message.received", actor="peer:127.0.0.1", record_ids=[message_id]))
        ctx.writer.write(item)
        return message_id
    finally:
        ctx.close()


def test_help_everywhere() -> None:
    for args in ([], ["keys"], ["audit"], ["messages"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_lint_ok_and_errors(project: Path) -> None:
    assert _invoke("lint", "--root", str(project)).output.strip() == "ok"
    (project / "channels" / "bad.yaml").write_text("name: bad\nsource:\n  kind: file\nprot: 1\n")
    result = _invoke("lint", "--root", str(project))
    assert result.exit_code == 1
    assert "channels/bad.yaml:4:1: unknown key 'prot'" in result.output


def test_keys_init_and_status(tmp_path: Path) -> None:
    from tests.conftest import write_project

    root = write_project(tmp_path / "p")
    result = _invoke("keys", "init", "--root", str(root))
    assert result.exit_code == 0 and "created keyring" in result.output
    assert (root / "keys" / "keyring.json").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keys", "init", "--root", str(root)])
    assert again.exit_code == 1 and "already exists" in again.output
    status = _invoke("keys", "status", "--root", str(root))
    assert status.exit_code == 0 and "KEK local v1 active" in status.output and "wraps 0 record(s)" in status.output


def test_messages_list_show_and_audited_decrypt(project: Path) -> None:
    message_id = _store_orm(project)
    listed = _invoke("messages", "list", "--root", str(project))
    assert message_id in listed.output and "ris-orders" in listed.output
    by_acc = _invoke("messages", "list", "--root", str(project), "--accession", phi.ACCESSION)
    assert message_id in by_acc.output
    assert _invoke("messages", "list", "--root", str(project), "--mrn", "MRN-NOBODY").output == ""
    shown = _invoke("messages", "show", message_id, "--root", str(project))
    assert "status: received" in shown.output and not phi.leaks_in_bytes(shown.output.encode())
    decrypted = _invoke("messages", "show", message_id, "--root", str(project), "--decrypt", "--reason", "treatment")
    assert phi.MRN in decrypted.output
    ctx = open_context(project)
    try:
        with ctx.db.connect() as conn:
            rows = conn.execute(select(AuditRow.__table__).where(AuditRow.__table__.c.action == "message.viewed")).all()
    finally:
        ctx.close()
    assert len(rows) == 1 and rows[0].purpose == "treatment" and message_id in rows[0].record_ids


def test_unknown_message_is_a_one_line_error(project: Path) -> None:
    result = runner.invoke(app, ["messages", "show", "01NOPE", "--root", str(project)])
    assert result.exit_code == 1 and result.output.strip() == "radbridge: error: no message 01NOPE"


def test_audit_verify_and_tail(project: Path) -> None:
    _store_orm(project)
    ok = _invoke("audit", "verify", "--root", str(project))
    assert ok.exit_code == 0 and ok.output.startswith("audit: OK: 1 entries")
    tail = _invoke("audit", "tail", "--root", str(project))
    assert "message.received success" in tail.output and "audit.verified" in tail.output
    ctx = open_context(project)
    try:
        with ctx.db.begin() as conn:
            conn.execute(AuditRow.__table__.update().where(AuditRow.__table__.c.seq == 1).values(actor="x"))
    finally:
        ctx.close()
    broken = runner.invoke(app, ["audit", "verify", "--root", str(project)])
    assert broken.exit_code == 1 and "BROKEN: node test-node: entry seq 1 was altered" in broken.output


def test_bad_key_file_mode_is_a_one_line_error(project: Path) -> None:
    (project / "keys" / "keyring.json").chmod(0o640)
    result = runner.invoke(app, ["messages", "list", "--root", str(project)])
    assert result.exit_code == 1
    assert result.output.strip().endswith("must be 0600 (chmod 600 " + str(project / "keys" / "keyring.json") + ")")


def test_invalid_config_lists_diagnostics_exit_2(project: Path) -> None:
    (project / "config" / "engine.yaml").write_text("stor: {}\n")
    result = runner.invoke(app, ["messages", "list", "--root", str(project)])
    assert (
        result.exit_code == 2 and "config/engine.yaml:1:1: unknown key 'stor' (did you mean 'store'?)" in result.output
    )


def test_keys_rotate_retire_status(project: Path) -> None:
    message_id = _store_orm(project)
    rotated = _invoke("keys", "rotate", "--root", str(project))
    assert rotated.exit_code == 0 and "v2 active; 1 data key(s) re-wrapped" in rotated.output
    status = _invoke("keys", "status", "--root", str(project)).output
    assert "v2 active" in status and "v1: created" in status and "wraps 0 record(s)" in status
    refused = runner.invoke(app, ["keys", "retire", "2", "--root", str(project)])
    assert refused.exit_code == 1 and "active" in refused.output
    assert _invoke("keys", "retire", "1", "--root", str(project)).exit_code == 0
    assert "v1 retired" in _invoke("keys", "status", "--root", str(project)).output
    shown = _invoke("messages", "show", message_id, "--root", str(project), "--decrypt")
    assert phi.MRN in shown.output  # still readable under the new version


def test_purge_now_removes_old_messages_and_is_audited(project: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from engine.store.tables import Message

    old, new = _store_orm(project), _store_orm(project)
    ctx = open_context(project)
    try:
        with ctx.db.begin() as conn:
            table = Message.__table__
            conn.execute(
                update(table).where(table.c.id == old).values(received_at=table.c.received_at - timedelta(days=40))
            )
    finally:
        ctx.close()
    result = _invoke("purge", "--root", str(project))
    assert result.exit_code == 0 and "ris-orders: 1 message(s) purged (older than 30 days)" in result.output
    assert "freed space scrubbed: yes" in result.output
    listed = _invoke("messages", "list", "--root", str(project)).output
    assert new in listed and old not in listed
    assert "retention.purged" in _invoke("audit", "tail", "--root", str(project)).output


def test_backup_restore_and_key_escrow_round_trip(project: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import contextlib

    from tests.conftest import fresh_postgres_database, write_project

    message_id = _store_orm(project)
    monkeypatch.setenv("RADBRIDGE_KEY_PASSPHRASE", "correct horse battery staple")
    assert _invoke("backup", str(tmp_path / "bk"), "--root", str(project)).exit_code == 0
    assert _invoke("keys", "export", str(tmp_path / "keys.sealed"), "--root", str(project)).exit_code == 0
    postgres = "postgresql" in (project / "config" / "engine.yaml").read_text()
    with fresh_postgres_database("radbridge_restore") if postgres else contextlib.nullcontext(None) as url:
        target = write_project(tmp_path / "restored", store_url=url)
        restored = _invoke(
            "restore", str(tmp_path / "bk"), "--keys", str(tmp_path / "keys.sealed"), "--root", str(target)
        )
        assert restored.exit_code == 0, restored.output
        assert "keyring imported" in restored.output
        shown = _invoke("messages", "show", message_id, "--root", str(target), "--decrypt")
        assert phi.MRN in shown.output
        assert _invoke("audit", "verify", "--root", str(target)).output.startswith("audit: OK")
        again = runner.invoke(app, ["restore", str(tmp_path / "bk"), "--root", str(target)])
        assert again.exit_code == 1  # never over existing data


def test_send_refuses_bad_target_and_reports_unreachable_peer(tmp_path: Path) -> None:
    import socket

    sample = Path(__file__).resolve().parents[1] / "samples" / "hl7" / "orm-o01-ct-head.hl7"
    bad = runner.invoke(app, ["send", str(sample), "--to", "localhost"])
    assert bad.exit_code == 1 and "--to must be host:port" in bad.output
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = runner.invoke(app, ["send", str(sample), "--to", f"127.0.0.1:{port}", "--timeout", "2"])
    assert down.exit_code == 1 and down.output.startswith("radbridge: error:")
    assert not phi.leaks_in_bytes(down.output.encode())
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"not hl7 at all\r")
    assert runner.invoke(app, ["send", str(empty), "--to", f"127.0.0.1:{port}"]).exit_code == 1
