from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from engine.store import db
from engine.store.tables import metadata


def test_revisions_build_exactly_the_models(tmp_path: Path) -> None:
    engine = db.create(f"sqlite:///{tmp_path}/m.db")
    db.migrate(engine)
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_upgrade_from_first_revision_keeps_data(tmp_path: Path) -> None:
    engine = db.create(f"sqlite:///{tmp_path}/m.db")
    db.migrate(engine, "0001")
    assert "audit_log" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (id, channel, direction, kind, status, received_at, updated_at, config_hash,"
                " size) VALUES ('01ABC', 'c', 'in', 'k', 'sent', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'h', 3)"
            )
        )
        conn.execute(text("INSERT INTO data_keys VALUES ('01ABC', 'local', 1, x'00', '2026-01-01 00:00:00')"))
    db.migrate(engine)
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, status FROM messages")).all() == [("01ABC", "sent")]
        assert conn.execute(text("SELECT count(*) FROM data_keys")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 0


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = db.create(f"sqlite:///{tmp_path}/m.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_0003_backfills_the_channel_of_queued_deliveries(tmp_path: Path) -> None:
    engine = db.create(f"sqlite:///{tmp_path}/m.db")
    db.migrate(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (id, channel, direction, kind, status, received_at, updated_at, config_hash,"
                " size) VALUES ('m1', 'ris-orders', 'in', 'k', 'queued', '2026-01-01', '2026-01-01', 'h', 3)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (message_id, destination, status, attempts, updated_at)"
                " VALUES ('m1', 'pacs', 'queued', 2, '2026-01-01')"
            )
        )
    db.migrate(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, destination, channel, status, attempts FROM deliveries")).all()
        assert rows == [("m1", "pacs", "ris-orders", "queued", 2)]
        assert conn.execute(text("SELECT content_mac FROM messages")).scalar() is None
