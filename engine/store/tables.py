"""The tables. No column holds PHI in clear: content is sealed, identifiers are blind indexes.

Every schema change is an Alembic revision in store/migrations/versions; a test checks that the
revisions build exactly these tables.
"""

from __future__ import annotations

from datetime import date, datetime

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


class SourceState(SQLModel, table=True):
    """A source's durable position or step (engine.store.state), sealed under a data key of its own."""

    __tablename__ = "source_state"
    __table_args__ = (_NO_ROWID,)

    name: str = Field(primary_key=True, max_length=200, description="channel/name")
    record_id: str = Field(max_length=36, description="data_keys row the value is sealed under")
    sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: datetime


class Study(SQLModel, table=True):
    """A study (or series, per channel) being assembled and correlated. Identifiers are blind
    indexes; the patient facts live sealed in the header part of the instance `header_message`."""

    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_study_uid", "study_uid_idx"),
        _sparse("ix_studies_stable_due", "stable_due"),
        _sparse("ix_studies_wait_due", "wait_due"),
        _NO_ROWID,
    )

    key: str = Field(primary_key=True, max_length=64, description="blind index of the grouping UID")
    id: str = Field(max_length=36, unique=True, description="the study's record id, shown to operators")
    channel: str = Field(max_length=128)
    study_uid_idx: str = Field(max_length=64)
    state: str = Field(max_length=16, description="receiving stable waiting ready held dropped cancelled")
    reason: str | None = Field(default=None, max_length=64, description="why held/dropped: a code, never PHI")
    instances: int = Field(default=0, description="instances counted at the last quiet period")
    first_at: datetime
    last_at: datetime
    stable_due: datetime | None = Field(default=None, description="end of the quiet period; NULL once swept")
    wait_due: datetime | None = Field(default=None, description="when an unmatched study stops waiting")
    header_message: str = Field(max_length=36, description="instance message whose header part is used")
    content_hash: str | None = Field(default=None, max_length=64, description="SOP instance set, last quiet")
    triggered_hash: str | None = Field(default=None, max_length=64, description="content study.ready went out for")
    version: int = Field(default=0, description="bumped by every change: writers guard on it")
    updated_at: datetime


class Instance(SQLModel, table=True):
    __tablename__ = "instances"
    __table_args__ = (_NO_ROWID,)

    study_key: str = Field(primary_key=True, max_length=64)
    sop_idx: str = Field(primary_key=True, max_length=64)
    series_idx: str = Field(max_length=64)
    message_id: str = Field(max_length=36, description="the stored instance (sealed Part 10 bytes)")
    sop_class: str = Field(max_length=64)
    modality: str = Field(max_length=16)
    body_part: str = Field(max_length=64)
    transfer_syntax: str = Field(max_length=64)
    sha256: str = Field(max_length=64, description="of the Part 10 bytes, checked when read back")
    size: int
    received_at: datetime


class StudyKey(SQLModel, table=True):
    """Correlation keys a study carries (several accessions, placer/filler numbers), as blind indexes."""

    __tablename__ = "study_keys"
    __table_args__ = (Index("ix_study_keys_study", "study_key"), _NO_ROWID)

    kind: str = Field(primary_key=True, max_length=16)
    idx: str = Field(primary_key=True, max_length=64)
    study_key: str = Field(primary_key=True, max_length=64)


class Order(SQLModel, table=True):
    """One order (an ORC/OBR or IPC group) in the correlation registry; its record is the sealed
    content of `message_id`, the latest order event."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_mrn", "mrn_idx"),
        Index("ix_orders_study", "study_key"),
        _sparse("ix_orders_expires", "expires_at"),
        _NO_ROWID,
    )

    id: str = Field(primary_key=True, max_length=36)
    key: str = Field(max_length=64, unique=True, description="blind index of the order's identity")
    state: str = Field(max_length=16, description="waiting matched ready held cancelled expired")
    priority: str = Field(max_length=16)
    mrn_idx: str = Field(max_length=64, description="patient id (with issuer) as a blind index")
    study_key: str | None = Field(default=None, max_length=64)
    message_id: str = Field(max_length=36)
    expires_at: datetime | None = None
    version: int = 0
    created_at: datetime
    updated_at: datetime


class OrderKey(SQLModel, table=True):
    __tablename__ = "order_keys"
    __table_args__ = (Index("ix_order_keys_order", "order_id"), _NO_ROWID)

    kind: str = Field(primary_key=True, max_length=16)
    idx: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(primary_key=True, max_length=36)


class ModelVersion(SQLModel, table=True):
    """The model registry: each declared model version's governance state and live thresholds.
    `running` counts its jobs in flight across every engine node (the per-model concurrency cap)."""

    __tablename__ = "model_versions"
    __table_args__ = (_NO_ROWID,)

    name: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=16, description="shadow active retired")
    evidence: str | None = Field(default=None, max_length=500, description="link to validation evidence")
    thresholds: str | None = Field(default=None, description="JSON per finding code; overrides the config")
    running: int = 0
    changed_at: datetime
    changed_by: str = Field(max_length=120)


class InferenceJob(SQLModel, table=True):
    """One inference of one study's content by one model version. Its request, result and raw
    model output are sealed message parts; this row holds only ids, states, digests and times."""

    __tablename__ = "inference_jobs"
    __table_args__ = (
        Index("ux_jobs_identity", "study_id", "model", "model_version", "content_hash", unique=True),
        _sparse("ix_jobs_due", "due_at"),
        Index("ix_jobs_state", "state"),
        _NO_ROWID,
    )

    id: str = Field(primary_key=True, max_length=36)
    study_id: str = Field(max_length=36)
    study_uid_idx: str | None = Field(default=None, max_length=64, description="Study Instance UID, blind index")
    content_hash: str = Field(max_length=64)
    model: str = Field(max_length=64)
    model_version: str = Field(max_length=64)
    state: str = Field(max_length=16, description="queued running completed dead cancelled")
    priority: int = Field(description="0 stat .. 3 routine: the order jobs are taken in")
    attempts: int = 0
    due_at: datetime | None = Field(default=None, description="next attempt while queued; NULL otherwise")
    holder: str | None = Field(default=None, max_length=120, description="engine process running it")
    lease_until: datetime | None = None
    channel: str = Field(max_length=128)
    trigger: str = Field(max_length=200, description="rule set/rule that chose the model")
    request_message: str = Field(max_length=36, description="the study.ready record, sealed")
    result_message: str | None = Field(default=None, max_length=36)
    clinical: bool | None = Field(default=None, description="result released (active) or kept (shadow)")
    input_digest: str | None = Field(default=None, max_length=64)
    output_digest: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=500, description="last failure: a class and code, never PHI")
    revision: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class Disclosure(SQLModel, table=True):
    """Accounting of disclosures: patient data (or data derived from it) sent outside the hospital."""

    __tablename__ = "disclosures"
    __table_args__ = (Index("ix_disclosures_patient", "patient_idx"), _NO_ROWID)

    id: str = Field(primary_key=True, max_length=36)
    patient_idx: str = Field(max_length=64, description="patient id as a blind index")
    recipient: str = Field(max_length=200, description="model name@version and host, or the export target")
    purpose: str = Field(max_length=64)
    method: str = Field(max_length=32, description="safe-harbor, limited-data-set or identified")
    study_id: str | None = Field(default=None, max_length=36)
    job_id: str | None = Field(default=None, max_length=36)
    items: int = 0
    at: datetime



class AiReport(SQLModel, table=True):
    """One AI report (a study's result from one model) and its lifecycle across the outputs:
    preliminary, corrected (new content or version), withdrawn (order cancelled, version recalled)."""

    __tablename__ = "ai_reports"
    __table_args__ = (Index("ix_ai_reports_study", "study_id"), _NO_ROWID)

    report_id: str = Field(primary_key=True, max_length=120, description="study id/model")
    study_id: str = Field(max_length=36)
    model: str = Field(max_length=64)
    version: str = Field(max_length=64)
    job_id: str = Field(max_length=36, description="the job whose result is the current revision")
    status: str = Field(max_length=16, description="preliminary corrected withdrawn")
    revision: int
    message_id: str = Field(max_length=36, description="the record of the current revision (sealed)")
    critical: bool
    final_message: str | None = Field(default=None, max_length=36, description="the radiologist's final report")
    final_status: str | None = Field(default=None, max_length=8, description="its OBR-25")
    row_version: int = 0
    created_at: datetime
    updated_at: datetime


class PriorityRaise(SQLModel, table=True):
    """A worklist priority the engine raised: at most one per study and level."""

    __tablename__ = "priority_raises"
    __table_args__ = (_NO_ROWID,)

    study_id: str = Field(primary_key=True, max_length=36)
    level: str = Field(primary_key=True, max_length=16)
    update_id: str = Field(max_length=64)
    job_id: str = Field(max_length=36)
    message_id: str = Field(max_length=36)
    raised_at: datetime


class User(SQLModel, table=True):
    """A local user or service account. The password is an argon2id hash (PHC string); the TOTP secret
    is sealed under a data key of its own. Users are disabled, never deleted (the audit names them)."""

    __tablename__ = "users"
    __table_args__ = (_NO_ROWID,)

    username: str = Field(primary_key=True, max_length=64, description="not PHI, but kept out of logs")
    display_name: str = Field(max_length=200)
    role: str = Field(max_length=32, description="admin integration_analyst radiologist technologist auditor service")
    password_hash: str | None = Field(default=None, max_length=256, description="argon2id; NULL: tokens only")
    totp_record: str | None = Field(default=None, max_length=36, description="data_keys row the secret is sealed under")
    totp_sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    totp_counter: int | None = Field(default=None, description="last TOTP time step accepted (replay protection)")
    failed_logins: int = Field(default=0, description="failures in a row since the last success or lockout")
    locked_until: datetime | None = None
    disabled: bool = False
    version: int = Field(default=0, description="bumped by every change: writers guard on it")
    created_at: datetime
    changed_at: datetime
    changed_by: str = Field(max_length=120)
    password_changed_at: datetime | None = None
    last_login_at: datetime | None = None


class ApiToken(SQLModel, table=True):
    """An API token: only the SHA-256 digest of its secret is kept; scopes within the owner's role."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user", "username"), _NO_ROWID)

    id: str = Field(primary_key=True, max_length=16, description="the token's public part (rb_<id>_...)")
    username: str = Field(foreign_key="users.username", max_length=64)
    label: str = Field(max_length=120)
    digest: str = Field(max_length=64)
    scopes: str = Field(description="JSON list of permissions")
    created_at: datetime
    created_by: str = Field(max_length=120)
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=120)
    last_used_at: datetime | None = None


class UserSession(SQLModel, table=True):
    """A web session; the row is keyed by the SHA-256 of the cookie's session id, never the id."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_user", "username"), _NO_ROWID)

    id_hash: str = Field(primary_key=True, max_length=64)
    username: str = Field(foreign_key="users.username", max_length=64)
    csrf_token: str = Field(max_length=64, description="random; worthless without the session cookie")
    created_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = Field(default=None, max_length=32, description="logout idle_timeout absolute_timeout ...")
    peer: str | None = Field(default=None, max_length=256)


class BreakGlassGrant(SQLModel, table=True):
    """A break-glass elevation: reason and review note sealed (free text may name a patient)."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (Index("ix_break_glass_user", "username", "expires_at"), _NO_ROWID)

    id: str = Field(primary_key=True, max_length=36, description="also the data_keys row of its sealed texts")
    username: str = Field(foreign_key="users.username", max_length=64)
    reason_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    minutes: int
    granted_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    reviewed_by: str | None = Field(default=None, max_length=120)
    reviewed_at: datetime | None = None
    review_sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class Attestation(SQLModel, table=True):
    """A dated organisational attestation for the compliance report (a BAA signed, a risk analysis done),
    recorded by `radbridge compliance attest`. Never changed: a newer one for the same item supersedes it."""

    __tablename__ = "attestations"
    __table_args__ = (Index("ix_attestations_item", "item", "attested_on"), _NO_ROWID)

    id: str = Field(primary_key=True, max_length=36)
    item: str = Field(max_length=64, description="what is attested: baa, risk-analysis, ... (engine.compliance)")
    attested_on: date = Field(description="the day it happened: signed, carried out, tested")
    attested_by: str = Field(max_length=200, description="who attests it (a name and role, not a patient)")
    evidence: str = Field(max_length=1000, description="where the evidence is: a document reference or a link")
    recorded_at: datetime


class FindingFeedback(SQLModel, table=True):
    """A radiologist's verdict on one AI finding: one current row per (report, finding code, user); a
    changed verdict replaces the row, the audit log keeps every one. No free text, so nothing here is PHI."""

    __tablename__ = "finding_feedback"
    __table_args__ = (
        Index("ux_finding_feedback_identity", "report_id", "code", "username", unique=True),
        Index("ix_finding_feedback_study", "study_id"),
        Index("ix_finding_feedback_at", "at"),
        _NO_ROWID,
    )

    id: str = Field(primary_key=True, max_length=36)
    report_id: str = Field(max_length=120, description="the AI report (study id/model)")
    study_id: str = Field(max_length=36)
    job_id: str = Field(max_length=36, description="the job whose result was shown when the verdict was given")
    model: str = Field(max_length=64)
    version: str = Field(max_length=64)
    code: str = Field(max_length=64, description="the finding's code")
    verdict: str = Field(max_length=16, description="agree disagree not_applicable")
    username: str = Field(max_length=64)
    at: datetime


metadata = SQLModel.metadata
