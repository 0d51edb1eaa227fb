"""The tables. No column holds PHI in clear: content is sealed, identifiers are blind indexes.

Every schema change is an Alembic revision in store/migrations/versions; a test checks that the
revisions build exactly these tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary, text
from sqlmodel import Field, SQLModel

STATUSES = ("received", "filtered", "transformed", "queued", "sent", "error", "dead")
# Fewer B-trees per insert is what makes a commit cheap: tables keyed by their natural primary key
# are WITHOUT ROWID on SQLite, and indexes on sparse columns are partial (PostgreSQL ignores the first).
_NO_ROWID = {"sqlite_with_rowid": False}


def _sparse(name: str, column: str) -> Index:
    where = text(f"{column} IS NOT NULL")
    return Index(name, column, sqlite_where=where, postgresql_where=where)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_channel", "channel", "id"),
        Index(
            "ix_messages_problem",
            "status",
            sqlite_where=text("status IN ('error', 'dead')"),
            postgresql_where=text("status IN ('error', 'dead')"),
        ),
        _sparse("ix_messages_control_idx", "control_idx"),
        _sparse("ix_messages_accession_idx", "accession_idx"),
        _sparse("ix_messages_mrn_idx", "mrn_idx"),
        _sparse("ix_messages_study_uid_idx", "study_uid_idx"),
        _NO_ROWID,
    )

    id: str = Field(primary_key=True, max_length=36, description="UUIDv7, so id order is arrival order")
    channel: str = Field(max_length=128)
    direction: str = Field(max_length=8, description="in | out")
    kind: str = Field(max_length=64, description="e.g. hl7v2 ORM^O01; never content")
    status: str = Field(max_length=16)
    received_at: datetime
    updated_at: datetime
    config_hash: str = Field(max_length=64)
    size: int
    error: str | None = Field(default=None, description="error text without PHI")
    control_idx: str | None = Field(default=None, max_length=64)
    content_mac: str | None = Field(default=None, max_length=64, description="keyed hash of the raw bytes (duplicates)")
    accession_idx: str | None = Field(default=None, max_length=64)
    mrn_idx: str | None = Field(default=None, max_length=64)
    study_uid_idx: str | None = Field(default=None, max_length=64)


class Delivery(SQLModel, table=True):
    """One row per (message, destination): its own state, attempts and next due time."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_queue", "channel", "destination", "status", "message_id"), _NO_ROWID)

    message_id: str = Field(foreign_key="messages.id", primary_key=True, max_length=36)
    destination: str = Field(primary_key=True, max_length=128)
    channel: str = Field(max_length=128, description="the message's channel: each (channel, destination) is a queue")
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    updated_at: datetime


class Content(SQLModel, table=True):
    """A sealed part of a message: raw, transformed, sent:<dest>, response:<dest>."""

    __tablename__ = "contents"
    # A rowid table on purpose: WITHOUT ROWID spills any row over ~1 KB to an overflow page of its own.

    message_id: str = Field(foreign_key="messages.id", primary_key=True, max_length=36)
    part: str = Field(primary_key=True, max_length=160)
    size: int
    sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    blob: str | None = Field(default=None, max_length=200, description="blob-folder path when too large to inline")


class DataKeyRow(SQLModel, table=True):
    """One wrapped data key per record; deleting the row crypto-shreds the record."""

    __tablename__ = "data_keys"
    __table_args__ = (_NO_ROWID,)

    record_id: str = Field(primary_key=True, max_length=64)
    kek_id: str = Field(max_length=64)
    kek_version: int
    wrapped: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime


class AuditRow(SQLModel, table=True):
    """One hash-chained audit entry; one chain per node, ordered by seq."""

    __tablename__ = "audit_log"
    __table_args__ = (_NO_ROWID,)

    node: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    id: str = Field(max_length=36)
    ts: str = Field(max_length=40, description="RFC 3339 UTC, as hashed")
    actor: str = Field(max_length=128)
    peer: str | None = Field(default=None, max_length=256)
    action: str = Field(max_length=64)
    outcome: str = Field(max_length=16)
    purpose: str | None = Field(default=None, max_length=64)
    record_ids: str = Field(description="JSON list of record ids")
    indexes: str = Field(description="JSON object kind -> blind index")
    detail: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditCheckpoint(SQLModel, table=True):
    __tablename__ = "audit_checkpoints"
    __table_args__ = (_NO_ROWID,)

    node: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    hash: str = Field(max_length=64)
    ts: str = Field(max_length=40)
    key_id: str = Field(max_length=32)
    signature: str = Field(max_length=128, description="Ed25519 over the canonical checkpoint, hex")


class ConfigVersion(SQLModel, table=True):
    """Every configuration the engine loaded (files hold ${NAME} references, never secret values)."""

    __tablename__ = "config_versions"

    hash: str = Field(primary_key=True, max_length=64)
    loaded_at: datetime = Field(index=True)
    files: str = Field(description="JSON object relative path -> text")


class Lease(SQLModel, table=True):
    """A claim on shared work (a delivery queue) by one engine process, until it expires."""

    __tablename__ = "leases"
    __table_args__ = (_NO_ROWID,)

    name: str = Field(primary_key=True, max_length=200)
    holder: str = Field(max_length=120)
    expires_at: datetime


metadata = SQLModel.metadata
