"""DICOM source and destination settings: what a channel file may say, validated before anything starts."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.tls import ServerTls, SocketClientTls

Service = Literal["storage", "echo", "ian", "mpps"]
_AE_CHARS = set(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~")


def _ae_title(value: str) -> str:
    """PS3.5 AE title: 1-16 characters, no backslash or control characters, not all spaces."""
    stripped = value.strip()
    if not stripped or len(value) > 16 or "\\" in value or not set(value) <= _AE_CHARS:
        raise ValueError(f"{value!r} is not an AE title (1-16 printable characters, no backslash)")
    return stripped


AeTitle = Annotated[str, AfterValidator(_ae_title)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowEntry(_Strict):
    ae_title: AeTitle | None = Field(None, description="Calling AE title the peer must use.")
    address: str | None = Field(None, description="IP address or network (10.0.0.0/8) the peer must connect from.")
    cn: str | None = Field(None, description="Common name of the client certificate (needs tls.ca).")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
            value = value.strip()
        return value

    @model_validator(mode="after")
    def _something(self) -> AllowEntry:
        if self.ae_title is None and self.address is None and self.cn is None:
            raise ValueError("an allow entry needs at least one of ae_title, address, cn")
        return self

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return None if self.address is None else ipaddress.ip_network(self.address, strict=False)


class DicomSourceConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address to listen on; 0.0.0.0 or :: for every interface.")
    port: int = Field(ge=0, le=65535, description="TCP port to listen on (0 picks a free one, for tests).")
    ae_title: AeTitle = Field("RADBRIDGE", description="Our AE title: the called AE title peers must use.")
    check_called_ae: bool = Field(
        True,
        description="Reject (A-ASSOCIATE-RJ, called AE title not recognised) associations addressed to another "
        "AE title than ae_title.",
    )
    services: list[Service] = Field(
        default_factory=lambda: ["storage", "echo"],
        min_length=1,
        description="What this listener serves: 'storage' (C-STORE of every storage SOP class, any transfer "
        "syntax, kept as received), 'echo' (C-ECHO), 'ian' (Instance Availability Notification N-CREATE), "
        "'mpps' (Modality Performed Procedure Step N-CREATE / N-SET).",
    )
    tls: ServerTls | None = Field(None, description="Serve DICOM over TLS (1.2 or later); plain TCP when omitted.")
    allow: list[AllowEntry] | None = Field(
        None,
        description="Peers allowed to associate. A peer must match one entry in every field that entry gives "
        "(ae_title, address, cn). Others are refused (A-ASSOCIATE-RJ, or the connection closed when the address "
        "or certificate already rules them out) and audited (association.refused). Everyone when omitted.",
    )
    max_associations: int = Field(16, ge=1, description="Associations served at once; more are rejected (transient).")
    max_pdu: int = Field(
        262144, ge=4096, le=1 << 26, description="Largest PDU we receive (bytes), told to the peer at association."
    )
    max_instance_bytes: int = Field(
        1 << 30,
        ge=4096,
        description="Largest dataset one C-STORE may carry (bytes). The association is aborted as soon as an "
        "instance goes over it, so one instance never holds more memory than this; audited (message.oversize).",
    )
    acse_timeout_s: float = Field(30, gt=0, description="Longest wait for association messages and TLS handshakes.")
    dimse_timeout_s: float = Field(60, gt=0, description="Longest wait for a DIMSE message once one has begun.")
    network_timeout_s: float = Field(120, gt=0, description="Close an association that sends nothing for this long.")
    sink_timeout_s: float = Field(
        60, gt=0, description="Longest wait for the engine to store one instance; then 0xA700 (the peer retries)."
    )
    topic: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="Internal topic whose instances this channel also takes in (what a C-GET or WADO-RS "
        "retrieval publishes), as if they had arrived by C-STORE.",
    )

    @field_validator("services")
    @classmethod
    def _unique(cls, value: list[Service]) -> list[Service]:
        return list(dict.fromkeys(value))

    @field_validator("allow")
    @classmethod
    def _allow_nonempty(cls, value: list[AllowEntry] | None) -> list[AllowEntry] | None:
        if value is not None and not value:
            raise ValueError("allow needs at least one entry (omit it to allow everyone)")
        return value

    @model_validator(mode="after")
    def _names_need_client_certs(self) -> DicomSourceConfig:
        if any(e.cn for e in self.allow or ()) and (self.tls is None or self.tls.ca is None):
            raise ValueError("allow lists certificate names (cn), but tls.ca is not set: no client certificate is "
                             "asked for")
        return self


class DicomDestinationConfig(_Strict):
    host: str = Field(description="Host name or address of the Storage SCP (PACS, AI node).")
    port: int = Field(ge=1, le=65535, description="Its DICOM port.")
    called_ae: AeTitle = Field(description="AE title of the Storage SCP.")
    calling_ae: AeTitle = Field("RADBRIDGE", description="Our AE title, as the peer knows us.")
    tls: SocketClientTls | None = Field(None, description="Associate over TLS (1.2 or later); plain TCP when omitted.")
    max_pdu: int = Field(262144, ge=4096, le=1 << 26, description="Largest PDU we receive (bytes).")
    connect_timeout_s: float = Field(10, gt=0, description="Give up connecting after this long (retried later).")
    acse_timeout_s: float = Field(30, gt=0, description="Longest wait for the association to be accepted.")
    dimse_timeout_s: float = Field(120, gt=0, description="Longest wait for the C-STORE response of one instance.")
    idle_s: float = Field(
        30, ge=0, description="Release the association after this long without sends (0: after every send)."
    )
    on_failure: Literal["retry", "dead"] = Field(
        "dead",
        description="A C-STORE failure status other than 0xA7xx (out of resources, always retried), or the peer "
        "accepting no presentation context for the instance: 'dead' dead-letters it, 'retry' retries later.",
    )
