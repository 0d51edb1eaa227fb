"""Open the engine's pieces in the right order: config -> keys -> store -> audit.

One function builds what `radbridge run` and every CLI command use, so there is one way to
reach the store, and every access goes through the same vault and audit log.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from engine.audit.checkpoint import write_checkpoint
from engine.audit.log import AuditLog, ChainLinker
from engine.config import Project, load_project
from engine.core.clock import utcnow
from engine.security import keyring as keyring_mod
from engine.security.blind_index import BlindIndex
from engine.security.keyring import Keyring
from engine.security.kms import open_kek
from engine.security.vault import AuditSealer, Vault
from engine.store import db
from engine.store.blobs import BlobFolder
from engine.store.messages import Messages
from engine.store.tables import ConfigVersion
from engine.store.writer import GroupWriter, WriteItem

log = logging.getLogger("radbridge")
_config_versions = ConfigVersion.__table__


@dataclass
class Context:
    project: Project
    keyring: Keyring
    vault: Vault
    index: BlindIndex
    db: Engine
    writer: GroupWriter
    audit: AuditLog
    messages: Messages

    @property
    def node(self) -> str:
        return self.project.engine.node.id

    def checkpoint(self) -> int | None:
        return write_checkpoint(self.db, self.keyring, self.node)

    def close(self) -> None:
        self.messages.close()
        self.writer.close()
        self.db.dispose()


def _under(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def store_url(project: Project) -> str:
    """The store URL with a relative SQLite path taken from the project root, not the cwd."""
    url = make_url(project.engine.store.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(_under(project.root, url.database)))
    return url.render_as_string(hide_password=False)


def load_keyring(project: Project, *, create_dev: bool = False) -> Keyring:
    keys = project.engine.keys
    return keyring_mod.load(
        keys.source,
        str(_under(project.root, keys.file)),
        keys.env,
        data_dir=_under(project.root, project.engine.data_dir),
        create_dev=create_dev and keys.allow_dev_key,
    )


def open_context(root: Path, *, project: Project | None = None, create_dev_key: bool = False) -> Context:
    """Load config, keys and store (migrated to the current schema) and start the writer."""
    project = project or load_project(root)
    keyring = load_keyring(project, create_dev=create_dev_key)
    engine = db.create(store_url(project))
    db.migrate(engine)
    writer = GroupWriter(engine, ChainLinker(project.engine.node.id))
    keys = project.engine.keys
    transit = keys.vault_transit.model_dump(exclude_none=True) if keys.vault_transit else None
    if transit and transit.get("ca"):
        transit["ca"] = str(_under(project.root, transit["ca"]))
    vault = Vault(keyring, open_kek(keyring, keys.kek, transit))
    blobs = BlobFolder(_under(project.root, project.engine.store.blob_dir))
    return Context(
        project=project,
        keyring=keyring,
        vault=vault,
        index=BlindIndex(keyring.index_key),
        db=engine,
        writer=writer,
        audit=AuditLog(writer, AuditSealer(keyring), project.engine.node.id),
        messages=Messages(engine, vault, blobs, project.hash, project.engine.store.inline_max_bytes),
    )


def config_diff(old: dict[str, str], new: dict[str, str]) -> str:
    lines: list[str] = []
    for path in sorted(set(old) | set(new)):
        lines += difflib.unified_diff(
            old.get(path, "").splitlines(keepends=True),
            new.get(path, "").splitlines(keepends=True),
            fromfile=f"a/{path}" if path in old else "/dev/null",
            tofile=f"b/{path}" if path in new else "/dev/null",
        )
    return "".join(lines)


def record_config(ctx: Context, actor: str) -> str:
    """Audit the configuration the engine just loaded: `config.changed` with its diff when it differs
    from the last one loaded, `config.loaded` otherwise. Returns the action written."""
    project = ctx.project
    with ctx.db.connect() as conn:
        last = conn.execute(select(_config_versions).order_by(_config_versions.c.loaded_at.desc()).limit(1)).first()
    if last is not None and last.hash == project.hash:
        ctx.audit.record("config.loaded", actor=actor, record_ids=[project.hash])
        return "config.loaded"
    previous: dict[str, Any] = json.loads(last.files) if last else {}
    detail = {"from": last.hash if last else None, "to": project.hash, "diff": config_diff(previous, project.files)}
    now = utcnow()
    with ctx.db.connect() as conn:
        known = conn.execute(select(_config_versions.c.hash).where(_config_versions.c.hash == project.hash)).first()
    item = WriteItem()
    if known is None:  # a configuration never seen before
        row = {"hash": project.hash, "loaded_at": now, "files": json.dumps(project.files, sort_keys=True)}
        item.inserts.append((_config_versions, row))
    else:  # back to an earlier configuration
        update = _config_versions.update().where(_config_versions.c.hash == project.hash).values(loaded_at=now)
        item.statements.append((update, {}))
    item.audit.append(ctx.audit.event("config.changed", actor=actor, record_ids=[project.hash], detail=detail))
    ctx.writer.write(item)
    return "config.changed"
