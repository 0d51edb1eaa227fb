"""TLS and HTTP credential settings shared by every listener and client (engine.yaml listeners,
MLLP, DICOM, webhook, Orthanc, retrieval): one shape, so they cannot drift apart. The contexts
are built from them by engine.security.tls."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

TlsVersion = Literal["1.2", "1.3"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerTls(_Strict):
    cert: str = Field(description="Server certificate chain (PEM file), relative to the project root.")
    key: str = Field(description="Private key of the server certificate (PEM file), relative to the project root.")
    ca: str | None = Field(
        None,
        description="CA certificates (PEM) that sign client certificates. When set, every client must present "
        "a certificate this CA signed (mutual TLS).",
    )
    min_version: TlsVersion = Field("1.2", description="Lowest TLS version accepted: '1.2' or '1.3'.")


class ClientTls(_Strict):
    ca: str | None = Field(
        None, description="CA certificates (PEM) to verify the server with; the system store when omitted."
    )
    cert: str | None = Field(None, description="Client certificate (PEM) to present, for mutual TLS.")
    key: str | None = Field(None, description="Private key of the client certificate (PEM).")
    min_version: TlsVersion = Field("1.2", description="Lowest TLS version accepted: '1.2' or '1.3'.")

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        return self


class SocketClientTls(ClientTls):
    """For MLLP and DICOM connections (HTTP clients check the certificate against the URL's host)."""

    server_name: str | None = Field(None, description="Name the server certificate must carry; defaults to `host`.")


class HttpAuth(_Strict):
    username: str | None = Field(None, description="User for HTTP basic authentication (with `password`).")
    password: SecretStr | None = Field(None, description="Its password; write `${PASSWORD}`, never the value.")
    bearer: SecretStr | None = Field(
        None, description="Token sent as `Authorization: Bearer <token>` instead of a user; write `${TOKEN}`."
    )

    @model_validator(mode="after")
    def _one(self) -> HttpAuth:
        basic = self.username is not None or self.password is not None
        if basic and (self.username is None or self.password is None):
            raise ValueError("auth.username and auth.password go together")
        if basic == (self.bearer is not None):
            raise ValueError("auth needs either username + password or bearer")
        return self
