"""No PHI outside the vault: store messages carrying fake PHI, then scan every byte the engine wrote."""

import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.runtime.context import open_context, record_config
from tests import phi


def _postgres_files_scanned(db) -> int:  # type: ignore[no-untyped-def]
    """Scan the PostgreSQL server's own files for this database, and its WAL, as raw bytes."""
    with db.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")
        data_dir = Path(conn.exec_driver_sql("SHOW data_directory").scalar())
        oid = conn.exec_driver_sql("SELECT oid FROM pg_database WHERE datname = current_database()").scalar()
    folders = [data_dir / "base" / str(oid), data_dir / "pg_wal"]
    if not all(os.access(f, os.R_OK) for f in folders):
        pytest.skip(f"the PostgreSQL data directory {data_dir} is not readable here")
    for folder in folders:
        assert phi.leaks_in_tree(folder) == {}, folder
    return sum(1 for f in folders for p in f.rglob("*") if p.is_file())


def test_no_phi_in_database_wal_blobs_logs_or_cli_output(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = open_context(project)
    ids = []
    try:
        record_config(ctx, "service:test")
        big = (phi.ORM * 400).encode()  # ~150 KB: goes to the blob folder
        for raw in (phi.ORM.encode(), phi.ORM.encode("utf-16-le"), big):
            message_id, item = ctx.messages.receive(
                "ris-orders",
                "hl7v2 ORM^O01",
                raw,
                destinations=["ai"],
                indexes={"accession": ctx.index("accession", phi.ACCESSION), "mrn": ctx.index("mrn", phi.MRN)},
            )
            item.audit.append(
                ctx.audit.event(
                    "message.received",
                    actor="peer:127.0.0.1",
                    record_ids=[message_id],
                    indexes={"mrn": ctx.index("mrn", phi.MRN)},
                    detail={"note": f"patient {phi.NAME_FAMILY}"},
                )
            )
            ctx.writer.write(item)
            ids.append(message_id)
        ctx.writer.write(ctx.messages.add_part(ids[0], "transformed", f'{{"mrn": "{phi.MRN}"}}'.encode()))
        ctx.writer.write(ctx.messages.set_status(ids[0], "error", error="mapping failed at PID-3"))
        ctx.checkpoint()
        data = project / "data"
        if ctx.db.dialect.name == "sqlite":
            assert (data / "radbridge.db-wal").stat().st_size > 0  # scanned while the WAL still holds the pages
        else:
            assert _postgres_files_scanned(ctx.db) > 0
        assert phi.leaks_in_tree(data) == {}
    finally:
        ctx.close()
    assert phi.leaks_in_tree(project / "data") == {}  # and after the WAL is checkpointed into the file

    runner = CliRunner()
    outputs = [
        runner.invoke(app, args).output
        for args in (
            ["messages", "list", "--root", str(project)],
            ["messages", "list", "--root", str(project), "--accession", phi.ACCESSION],
            ["messages", "show", ids[0], "--root", str(project)],
            ["audit", "tail", "--root", str(project), "-n", "50"],
            ["audit", "verify", "--root", str(project)],
            ["keys", "status", "--root", str(project)],
            ["audit", "export", "--format", "fhir", "--root", str(project)],
            ["audit", "export", "--format", "atna", "--root", str(project)],
        )
    ]
    assert all(outputs)
    assert phi.leaks_in_bytes("\n".join(outputs).encode()) == []
    assert phi.leaks_in_bytes(caplog.text.encode()) == []
    # The scanner itself finds PHI where it is: the test can fail.
    assert phi.leaks_in_bytes(phi.ORM.encode()) and phi.leaks_in_bytes(phi.ORM.encode("utf-16-le"))
