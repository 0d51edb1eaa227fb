"""Every configuration the engine loads is audited; a change carries its diff (sealed)."""

import json
from pathlib import Path

from sqlalchemy import select

from engine.config import load_project
from engine.runtime.context import open_context, record_config
from engine.store.tables import AuditRow


def test_config_change_is_audited_with_its_diff(project: Path) -> None:
    ctx = open_context(project)
    try:
        assert record_config(ctx, "service:test") == "config.changed"  # first load: everything is new
        assert record_config(ctx, "service:test") == "config.loaded"
        engine_yaml = project / "config" / "engine.yaml"
        engine_yaml.write_text(engine_yaml.read_text().replace("port: 18480", "port: 18481"))
        ctx.project = load_project(project)
        assert record_config(ctx, "service:test") == "config.changed"
        audit = AuditRow.__table__
        with ctx.db.connect() as conn:
            rows = conn.execute(select(audit).where(audit.c.action == "config.changed").order_by(audit.c.seq)).all()
        detail = ctx.audit.open_detail(rows[-1].id, rows[-1].detail)
        assert detail["to"] == ctx.project.hash and detail["from"] != detail["to"]
        assert "-listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18480}]" in detail["diff"]
        assert "+listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18481}]" in detail["diff"]
        assert json.loads(rows[-1].record_ids) == [ctx.project.hash]
        assert b"18481" not in (rows[-1].detail or b"")  # the diff is sealed, not in clear
    finally:
        ctx.close()


def test_messages_carry_the_config_hash(project: Path) -> None:
    ctx = open_context(project)
    try:
        message_id, item = ctx.messages.receive("c", "k", b"x")
        ctx.writer.write(item)
        assert ctx.messages.get(message_id).config_hash == ctx.project.hash
    finally:
        ctx.close()
