"""MLLP source and destination settings: what a channel file may say, validated before anything starts."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.tls import ServerTls, SocketClientTls

# --- configuration -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


class MllpSourceConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address to listen on; 0.0.0.0 or :: for every interface.")
    port: int = Field(ge=0, le=65535, description="TCP port to listen on (0 picks a free one, for tests).")
    tls: ServerTls | None = Field(None, description="Serve MLLP over TLS (1.2 or later); plain TCP when omitted.")
    allow: list[str] | None = Field(
        None,
        description="Peers allowed to connect: IP addresses or networks (10.0.0.0/8) and/or client certificate "
        "common names (needs tls.ca). When both kinds are listed a peer must match one of each. Others are "
        "disconnected at once and audited (connection.refused). Everyone may connect when omitted.",
    )
    max_message_bytes: int = Field(
        1 << 20, ge=256, description="Largest frame accepted; a longer one is audited and the connection closed."
    )
    idle_timeout_s: float = Field(300, gt=0, description="Close a connection that sends nothing for this long.")
    read_timeout_s: float = Field(
        30,
        gt=0,
        description="Longest time from the start of a frame (or of the TLS handshake) to its end; a frame still "
        "unfinished then is dropped unacknowledged, audited, and the connection closed.",
    )
    max_connections: int = Field(64, ge=1, description="Connections served at once; more are refused and audited.")
    accept_types: list[str] | None = Field(
        None,
        description="Message types this channel takes, e.g. ['ORM^O01', 'OMI^O23'] (or just 'ORM' for every "
        "trigger). Others are still stored and audited, then answered AR with ERR code 200. All when omitted.",
    )
    ack_mode: Literal["original", "enhanced"] = Field(
        "original",
        description="'original': always answer AA/AE/AR. 'enhanced': when a message carries MSH-15, answer with "
        "a commit ACK (CA/CE/CR) as MSH-15 asks (AL, NE, ER, SU); messages without MSH-15 get original ACKs.",
    )

    @field_validator("allow")
    @classmethod
    def _allow_nonempty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            value = [v.strip() for v in value]
            if not value or any(not v for v in value):
                raise ValueError("allow needs at least one non-empty address, network or certificate name")
        return value

    @field_validator("accept_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for item in value:
                code, _, trigger = item.partition("^")
                if len(code) != 3 or not code.isalnum() or (trigger and not (2 <= len(trigger) <= 3)):
                    raise ValueError(f"accept_types: {item!r} is not a message type like 'ORM^O01' or 'ORM'")
        return value

    @model_validator(mode="after")
    def _names_need_client_certs(self) -> MllpSourceConfig:
        names = [a for a in self.allow or () if _allow_entry(a) is None]
        if names and (self.tls is None or self.tls.ca is None):
            raise ValueError("allow lists certificate names, but tls.ca is not set: no client certificate is asked for")
        return self


class MllpDestinationConfig(_Strict):
    host: str = Field(description="Host name or address of the receiving system.")
    port: int = Field(ge=1, le=65535, description="Its MLLP port.")
    tls: SocketClientTls | None = Field(None, description="Connect with TLS (1.2 or later); plain TCP when omitted.")
    connect_timeout_s: float = Field(10, gt=0, description="Give up connecting after this long (retried later).")
    ack_timeout_s: float = Field(30, gt=0, description="Wait this long for the ACK of each message.")
    keep_alive: bool = Field(
        True, description="Keep the connection open between messages (reconnecting when it fails)."
    )
    on_ae: Literal["retry", "dead"] = Field(
        "dead", description="AE/CE from the peer (content error): 'dead' dead-letters the message, 'retry' retries."
    )
    on_ar: Literal["retry", "dead"] = Field(
        "retry", description="AR/CR from the peer (rejected, often 'busy'): 'retry' retries later, 'dead' dead-letters."
    )
    on_timeout: Literal["retry", "dead"] = Field(
        "retry", description="No ACK within ack_timeout_s: 'retry' (default) or 'dead'."
    )
