"""Webhook source settings: what a channel file may say, validated before anything starts."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from engine.config.tls import ServerTls

# RFC 9110 token: what an HTTP header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MIN_SECRET = 16


def _long_enough(value: SecretStr | None) -> SecretStr | None:
    if value is not None and len(value.get_secret_value()) < MIN_SECRET:
        raise ValueError(f"must be at least {MIN_SECRET} characters long")
    return value


class _Strict(BaseModel):
    # Inputs never appear in validation errors: auth values are resolved `${SECRET}` references.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class WebhookHmac(_Strict):
    secret: SecretStr = Field(
        description="Shared secret the sender signs each body with (16 characters or more); write `${NAME}` "
        "so the value comes from the environment, never from the file.",
    )
    header: str = Field("X-Signature", description="Request header that carries the signature.")
    algorithm: Literal["sha256", "sha384", "sha512"] = Field(
        "sha256",
        description="HMAC hash. The header holds the hex digest of the raw body, optionally prefixed with the "
        "algorithm name and '=' (GitHub style, e.g. 'sha256=9f86…').",
    )

    _secret_length = field_validator("secret")(_long_enough)

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError("header must be an HTTP header name such as X-Signature")
        return value


class WebhookAuth(_Strict):
    bearer: SecretStr | None = Field(
        None,
        description="Token the sender must present as `Authorization: Bearer <token>` (16 characters or more); "
        "write `${NAME}` so the value comes from the environment.",
    )
    hmac: WebhookHmac | None = Field(None, description="Require an HMAC signature of each body instead of a token.")
    none: bool = Field(False, description="No authentication (what `auth: none` means); only with a loopback `host`.")

    _bearer_length = field_validator("bearer")(_long_enough)

    @model_validator(mode="after")
    def _exactly_one(self) -> WebhookAuth:
        if sum((self.bearer is not None, self.hmac is not None, self.none)) != 1:
            raise ValueError("auth needs exactly one of 'bearer' or 'hmac' (or 'none' on a loopback host)")
        return self


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allow_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


class WebhookSourceConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address to listen on; 0.0.0.0 or :: for every interface.")
    port: int = Field(ge=0, le=65535, description="TCP port to listen on (0 picks a free one, for tests).")
    path: str = Field("/notify", pattern=r"^/[A-Za-z0-9._~/-]*$", description="URL path notifications are POSTed to.")
    tls: ServerTls | None = Field(None, description="Serve HTTPS (TLS 1.2 or later); plain HTTP when omitted.")
    auth: WebhookAuth = Field(
        description="How senders prove who they are: `{bearer: ${TOKEN}}` or `{hmac: {secret: ${SECRET}}}`. "
        "`none` is accepted only when `host` is a loopback address (127.0.0.1, ::1), for a sender on the "
        "same machine.",
    )
    format: Literal["generic", "orthanc"] = Field(
        "generic",
        description="Body format: 'generic' ({event, study_uid, accession(s), patient_id, pacs_id}) or 'orthanc' "
        "(the JSON the Lua OnStableStudy script in engine.connectors.http posts).",
    )
    allow: list[str] | None = Field(
        None,
        description="Sender addresses allowed: IP addresses or networks (10.0.0.0/8). Others get 403 and are "
        "audited (webhook.refused). Everyone may send when omitted.",
    )
    max_body_bytes: int = Field(
        1 << 20, ge=256, description="Largest body accepted; a larger one gets 413 and is audited (message.oversize)."
    )
    read_timeout_s: float = Field(30, gt=0, description="Longest time to receive a request body; slower gets 408.")
    retry_after_s: int = Field(
        30, ge=1, description="Retry-After (seconds) sent with 503 when the engine cannot store a notification."
    )
    max_connections: int = Field(64, ge=1, description="Connections served at once; more get 503.")

    @field_validator("auth", mode="before")
    @classmethod
    def _none_word(cls, value: object) -> object:
        # `auth: none` is the spelling; one model (not a union) keeps error locations plain.
        if isinstance(value, str):
            if value != "none":
                raise ValueError("auth must be 'none' or a mapping with 'bearer' or 'hmac'")
            return {"none": True}
        return value

    @field_validator("auth")
    @classmethod
    def _none_only_on_loopback(cls, value: WebhookAuth, info: ValidationInfo) -> WebhookAuth:
        host = info.data.get("host")
        if value.none and host is not None and not is_loopback(host):
            raise ValueError("auth: none is allowed only with a loopback host (127.0.0.1 or ::1)")
        return value

    @field_validator("allow")
    @classmethod
    def _allow_networks(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("allow needs at least one address or network")
            for entry in value:
                if allow_network(entry) is None:
                    raise ValueError(f"allow: {entry!r} is not an IP address or network")
        return value
