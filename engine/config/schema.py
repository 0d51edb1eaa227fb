"""Pydantic models for config/engine.yaml, channels/*.yaml and mappings/*.yaml.

Every model forbids extra keys (a typo must fail lint, not be ignored) and every field has a
description: the descriptions are the reference documentation. Unions are avoided on purpose
so that each validation error's location is a real path in the YAML document.
"""

from __future__ import annotations

import re
import socket
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from engine.config.auth import AuthPolicy
from engine.config.tls import ServerTls

SLUG = r"^[a-z0-9][a-z0-9._-]*$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


def invalid(message: str) -> PydanticCustomError:
    """An error whose message completes "'<key>' ..." in a diagnostic; must not contain the value."""
    return PydanticCustomError("invalid", message)


def _relative(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise invalid("must be a path relative to the project root (no leading '/', no '..')")
    return value


RelPath = Annotated[str, AfterValidator(_relative)]


def default_node_id() -> str:
    """The host name, lower-cased and reduced to slug characters."""
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower()).strip("-._")
    return name or "node"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- config/engine.yaml ----------------------------------------------------------------------


class NodeConfig(Strict):
    id: str = Field(
        default_factory=default_node_id,
        pattern=SLUG,
        description="Name of this engine node in logs, audit entries and job leases; default: host name.",
    )


class StoreConfig(Strict):
    url: str = Field(
        "sqlite:///data/radbridge.db",
        description="SQLAlchemy database URL: sqlite:///path or postgresql+psycopg://… (use ${NAME} for the password).",
    )
    blob_dir: str = Field("data/blobs", description="Folder for encrypted payloads too large to keep inline.")
    inline_max_bytes: int = Field(
        65536,
        ge=0,
        description="Payloads up to this size are stored in the database row, larger ones as blobs.",
    )
    lease_ttl_s: float = Field(
        30.0,
        gt=0,
        description="How long a node's claim on a delivery queue lasts without renewal; after a node dies, "
        "another takes its queues over once this has passed.",
    )


class VaultTransitConfig(Strict):
    addr: str = Field(description="Vault address, e.g. https://vault.internal:8200.")
    key: str = Field(description="Name of the transit key.")
    mount: str = Field("transit", description="Mount path of the transit engine.")
    token_env: str = Field("VAULT_TOKEN", pattern=ENV_NAME, description="Environment variable holding the token.")
    namespace: str | None = Field(None, description="Vault Enterprise namespace, if any.")
    ca: str | None = Field(None, description="CA bundle (PEM) to verify Vault's certificate.")


class KeysConfig(Strict):
    source: Literal["file", "env"] = Field(
        "file",
        description="Where the keyring (key-encryption keys) comes from: a file or an environment variable.",
    )
    file: str = Field("~/.radbridge/keyring.json", description="Keyring file when source is 'file'; must be mode 0600.")
    env: str = Field(
        "RADBRIDGE_KEYRING",
        pattern=ENV_NAME,
        description="Environment variable holding the keyring when source is 'env'.",
    )
    allow_dev_key: bool = Field(
        True, description="Create a throwaway development keyring when none exists. Set false in production."
    )
    kek: Literal["keyring", "vault-transit"] = Field(
        "keyring",
        description="Who holds the key-encryption key: the keyring itself, or HashiCorp Vault's transit "
        "engine (data keys are then wrapped by Vault; the keyring still holds the index, audit and signing keys).",
    )
    vault_transit: VaultTransitConfig | None = Field(
        None, description="Vault transit settings when kek is vault-transit."
    )


class ListenerConfig(Strict):
    name: str = Field(pattern=SLUG, description="Name of the listener, unique in this file.")
    kind: Literal["http"] = Field("http", description="Protocol served: 'http' (REST API and web pages).")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 or :: for every interface.")
    port: int = Field(ge=1, le=65535, description="TCP port to bind.")
    tls: ServerTls | None = Field(None, description="TLS settings; without them the listener speaks plain HTTP.")


class RetentionConfig(Strict):
    messages_days: int = Field(30, ge=1, description="Days to keep messages and payloads before purging them.")
    audit_days: int = Field(2190, ge=1, description="Days to keep audit entries (default 6 years).")
    batch_size: int = Field(1000, ge=1, description="Rows purged per transaction, so purges never lock for long.")


class AuditForwardConfig(Strict):
    host: str = Field(description="Syslog collector (RFC 5424 over TLS, RFC 5425 framing), e.g. a SIEM.")
    port: int = Field(6514, ge=1, le=65535, description="Its TLS syslog port (6514 is the registered one).")
    ca: str = Field(description="CA (PEM) the collector's certificate must chain to; relative to the project root.")
    cert: str | None = Field(None, description="Client certificate (PEM) for collectors that require one.")
    key: str | None = Field(None, description="Private key of the client certificate (PEM).")
    facility: Literal[10, 13] = Field(10, description="Syslog facility: 10 authpriv or 13 log audit.")
    state_file: str = Field(
        "data/audit-forward.json", description="Where the last forwarded entry is remembered, to resume without gaps."
    )


class AuditConfig(Strict):
    checkpoint_interval_seconds: int = Field(
        300, ge=1, description="Seconds between signed checkpoints of the audit hash chain."
    )
    forward: AuditForwardConfig | None = Field(
        None, description="Stream every entry and checkpoint off the host as it is written (IHE ATNA over syslog)."
    )


class SiteConfig(Strict):
    timezone: str = Field("UTC", description="IANA time zone of the site, for HL7 timestamps without offset.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError, OSError):  # not found (a KeyError), malformed, a folder
            raise invalid("must be an IANA time zone name such as Europe/Berlin") from None
        return value


def _default_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(name="api", kind="http", host="127.0.0.1", port=8480)]


class EngineConfig(Strict):
    node: NodeConfig = Field(default_factory=NodeConfig, description="Identity of this engine node.")
    data_dir: str = Field("data", description="Folder for the engine's working files.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Database and blob storage.")
    keys: KeysConfig = Field(default_factory=KeysConfig, description="Where encryption keys come from.")
    listeners: list[ListenerConfig] = Field(
        default_factory=_default_listeners,
        description="Sockets the engine itself serves (API, web); channel listeners are set in channels.",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="How long data is kept.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Audit log settings.")
    site: SiteConfig = Field(default_factory=SiteConfig, description="Facts about the site.")
    auth: AuthPolicy = Field(default_factory=AuthPolicy, description="Sign-in rules, sessions and optional OIDC.")
    channels: list[RelPath] = Field(
        default_factory=lambda: ["channels/*.yaml"],
        description="Glob patterns, relative to the project root, of the channel files to load.",
    )
    mappings: RelPath = Field("mappings", description="Folder, relative to the project root, of mapping files.")


# --- channels/*.yaml -------------------------------------------------------------------------


def _split_options(data: Any, named: tuple[str, ...]) -> Any:
    # The component's own keys are validated later by its Config model; park them in `options`.
    if isinstance(data, dict):
        out = {key: data[key] for key in named if key in data}
        out["options"] = {key: value for key, value in data.items() if key not in named}
        return out
    return data


class ComponentRef(Strict):
    kind: str = Field(description="Registered component name, e.g. mllp, dicom, http, fhir, file.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="The other keys, validated by the component's own Config model."
    )

    @model_validator(mode="before")
    @classmethod
    def _park(cls, data: Any) -> Any:
        return _split_options(data, ("kind",))


class RetryPolicy(Strict):
    max_attempts: int = Field(10, ge=1, description="Attempts before the message goes to the dead letter queue.")
    backoff_s: float = Field(5.0, gt=0, description="Wait before the second attempt; doubles after each failure.")
    max_backoff_s: float = Field(600.0, gt=0, description="Longest wait between two attempts.")


class DestinationRef(Strict):
    name: str = Field(pattern=SLUG, description="Label of this destination, unique within the channel.")
    kind: str = Field(description="Registered destination name, e.g. mllp, fhir, http, file.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries with backoff, then dead letter.")
    body: Literal["transformed", "raw"] = Field(
        "transformed",
        description="What this destination is sent: the mapping's output (the message as received when the "
        "channel has no mapping), or always the message as received (to pass HL7 through unchanged).",
    )
    deidentify: str | None = Field(
        None,
        description="For a destination outside the hospital: HL7 v2 bodies are de-identified (HIPAA Safe Harbor "
        "identifiers, docs/deidentification.md) before they leave, with this profile file (YAML, relative to the "
        "project root), or `basic` for the default profile. The stored message keeps its original.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The other keys, validated by the component's own Config model."
    )

    @model_validator(mode="before")
    @classmethod
    def _park(cls, data: Any) -> Any:
        return _split_options(data, ("name", "kind", "retry", "body", "deidentify"))


class StudyAssemblyConfig(Strict):
    group_by: Literal["study", "series"] = Field(
        "study", description="Assemble instances by Study Instance UID (default) or by Series Instance UID."
    )
    quiet_s: float = Field(
        30, gt=0, description="A study is stable after this many seconds without a new instance (study.stable)."
    )
    late_series: Literal["retrigger", "ignore"] = Field(
        "retrigger",
        description="New instances after a study went out as study.ready: 'retrigger' sends study.ready again for "
        "the new content once it is quiet; 'ignore' records them and emits nothing. The same set of SOP "
        "instances never triggers twice.",
    )


class ChannelConfig(Strict):
    name: str = Field(pattern=SLUG, description="Unique channel name (lowercase letters, digits, . _ -).")
    description: str = Field("", description="Free text for people reading the channel list.")
    enabled: bool = Field(True, description="Disabled channels are validated but not started.")
    source: ComponentRef = Field(description="Where messages come from: `kind` plus that source's keys.")
    filter: ComponentRef | None = Field(None, description="Optional stage deciding which messages go on.")
    mapping: RelPath | None = Field(None, description="Mapping file applied to each message, relative to the root.")
    study: StudyAssemblyConfig | None = Field(
        None,
        description="For DICOM channels: assemble the instances received into studies, which become stable "
        "after a quiet period and go to correlation. Needs a source that delivers DICOM instances.",
    )
    destinations: list[DestinationRef] = Field(
        default_factory=list, description="Where messages go: each a `name`, a `kind` and that kind's keys."
    )
    strict: bool = Field(
        False,
        description="Also check each HL7 message against its version's message structure (hl7apy): a message "
        "that does not match is answered AE and kept for review. Costs milliseconds a message.",
    )
    application_ack: str | None = Field(
        None,
        description="Label of the destination that carries HL7 application ACKs back to senders that ask "
        "for them in MSH-16 (enhanced acknowledgement mode); it receives nothing else.",
    )
    dedup_window_s: int = Field(
        86400,
        ge=0,
        description="A message repeating an earlier one's sender, control id and content within this many "
        "seconds is acknowledged again but not processed twice (0: off).",
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        description="Days to keep this channel's messages and payloads before purging them (unset: "
        "`retention.messages_days`). Messages still awaiting delivery are kept; the audit trail always is.",
    )


# --- mappings/*.yaml -------------------------------------------------------------------------


class Condition(Strict):
    path: str = Field(description="Path read for the test, in the same context as the rule's `from`.")
    in_: list[str] | None = Field(None, alias="in", min_length=1, description="True when the value is one of these.")
    not_in: list[str] | None = Field(None, min_length=1, description="True when the value is absent or none of these.")
    equals: str | None = Field(None, description="True when the value is exactly this.")
    present: bool | None = Field(None, description="true: the path has a value; false: it is absent or empty.")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [t for t in (self.in_, self.not_in, self.equals, self.present) if t is not None]
        if len(given) != 1:
            raise invalid("needs exactly one of 'in', 'not_in', 'equals', 'present'")
        return self


def _one_or_many(value: Any, what: str) -> Any:
    if isinstance(value, str):
        return [value]
    if value is not None and not isinstance(value, list):
        raise invalid(f"must be {what}")
    return value


class FieldRule(Strict):
    from_: list[str] | None = Field(
        alias="from",
        min_length=1,
        description="Path, or list of paths tried in order, to read the value from (or give `value`).",
    )
    value: Any = Field(None, description="A constant instead of `from` (a string, number or boolean).")
    required: bool = Field(False, description="Fail the message when no path yields a value.")
    default: Any = Field(None, description="Value used when no path yields one (a string, number or boolean).")
    fn: list[str] = Field(
        default_factory=list,
        description="String functions applied, in order, to each value read (trim, upper, ...).",
    )
    map: str | None = Field(None, description="Name of a table in `tables` translating the value.")
    as_: Literal["str", "int", "decimal", "date", "datetime"] | None = Field(
        None, alias="as", description="Convert the value to this type (default: the target field's type)."
    )
    when: Condition | None = Field(
        None, description="Apply the rule only when this test holds; otherwise the field is left out."
    )
    seq: str | None = Field(
        None,
        description="For `to: hl7v2`, a number instead of a value: `segment` numbers the segment among the "
        "message's segments of its id (a Set ID: 1, 2, 3...); a list path (`result.result.findings`) gives the "
        "number of the current item of the group over that list.",
    )
    join: str | None = Field(
        None,
        description="For `from: hl7v2`: read every value the `[*]` paths give (each occurrence and repetition) "
        "and join them with this text, e.g. a newline for report lines.",
    )

    @model_validator(mode="before")
    @classmethod
    def _constant(cls, data: Any) -> Any:
        # `value:` / `seq:` stand in for `from:`; without any, pydantic reports "missing required key 'from'".
        if isinstance(data, dict) and ("value" in data or "seq" in data) and "from" not in data:
            return {**data, "from": None}
        return data

    @field_validator("from_", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _one_or_many(value, "a path or a list of paths")

    @field_validator("fn", mode="before")
    @classmethod
    def _functions(cls, value: Any) -> Any:
        return _one_or_many(value, "a function name or a list of them")

    @field_validator("default", "value")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | int | float | bool):
            raise invalid("must be a single value (string, number or boolean)")
        return value

    @model_validator(mode="after")
    def _source(self) -> FieldRule:
        given = [k for k, v in (("from", self.from_), ("value", self.value), ("seq", self.seq)) if v is not None]
        if len(given) > 1:
            raise invalid(f"takes either '{given[0]}' or '{given[1]}', not both")
        if not given:
            raise invalid("needs 'from' (paths) or 'value' (a constant)")
        return self


class NestedGroup(Strict):
    """A group inside a group (`to: hl7v2`); groups nest one level deep."""

    each: str | None = Field(
        None,
        description="A record list path (e.g. `result.result.findings[*].measurements`): the group's segments "
        "are written once per item. Absent: once.",
    )
    fields: dict[str, FieldRule] = Field(description="HL7 path -> rule, for the segments this group writes.")


class SegmentGroup(Strict):
    """Segments written after the mapping's own `fields`, once per item of a record list (`to: hl7v2`)."""

    each: str | None = Field(
        None,
        description="A record list path (e.g. `result.result.findings`): the group's segments are written once "
        "per item, and `[*]` in its paths reads that item. Absent: once.",
    )
    fields: dict[str, FieldRule] = Field(description="HL7 path -> rule, for the segments this group writes.")
    groups: list[NestedGroup] = Field(
        default_factory=list, description="Groups written after this group's own segments, for each of its items."
    )


class MappingFile(Strict):
    from_: Literal["hl7v2", "dicom", "fhir", "order", "study", "result", "patient", "priority_update"] = Field(
        alias="from", description="What the mapping reads: a message format or a canonical record."
    )
    to: str = Field(description="What the mapping produces: a record type (order, patient) or hl7v2.")
    accept: list[str] = Field(
        default_factory=list,
        description="HL7 message types taken, as CODE^TRIGGER (or CODE for any trigger); others are "
        "refused. Empty: every type.",
    )
    each: str | None = Field(
        None,
        description="Segment id opening a group (e.g. ORC): one record per group; paths look in the "
        "group first, then in the whole message.",
    )
    topic: FieldRule | None = Field(
        None,
        description="Rule giving each record's internal topic (a constant string is allowed); default: "
        "<record type>.<event>.",
    )
    template: dict[str, str] = Field(
        default_factory=dict,
        description="For `to: hl7v2`: constant values by HL7 path (MSH-3, MSH-9.1, ...), written before `fields`.",
    )
    fields: dict[str, FieldRule] = Field(
        description="Output field name (or HL7 path for `to: hl7v2`) -> rule saying where its value comes from."
    )
    tables: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Named code tables used by `map:`, each code -> value; code "*" is the fallback.',
    )
    groups: list[SegmentGroup] = Field(
        default_factory=list,
        description="For `to: hl7v2`: segments repeated per item of a record list, written after `fields`.",
    )
    validate_: bool = Field(
        False,
        alias="validate",
        description="For `to: hl7v2`: check each built message against its HL7 version's message structure "
        "(hl7apy) before it leaves; a message that does not fit is a permanent error.",
    )

    @field_validator("accept", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        return _one_or_many(value, "a message type or a list of them")

    @field_validator("topic", mode="before")
    @classmethod
    def _topic(cls, value: Any) -> Any:
        return {"value": value} if isinstance(value, str) else value
