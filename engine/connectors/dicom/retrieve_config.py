"""Settings of the `dicom-retrieve` destination (engine.connectors.dicom.retrieve)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.tls import HttpAuth, SocketClientTls
from engine.connectors.dicom.config import AeTitle

UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrieveConfig(_Strict):
    method: Literal["c-move", "c-get", "wado-rs"] = Field(
        description="'c-move': the PACS sends the study to move_destination; 'c-get' and 'wado-rs': we fetch it "
        "and publish each instance on `into`."
    )
    host: str | None = Field(None, description="PACS host (c-move, c-get).")
    port: int | None = Field(None, ge=1, le=65535, description="PACS DICOM port (c-move, c-get).")
    called_ae: AeTitle | None = Field(None, description="The PACS's AE title (c-move, c-get).")
    calling_ae: AeTitle = Field("RADBRIDGE", description="Our AE title, as the PACS knows it.")
    move_destination: AeTitle | None = Field(
        None, description="c-move: AE title the PACS sends the study to (our storage listener, known to "
        "the PACS as a modality)."
    )  # fmt: skip
    base_url: str | None = Field(None, description="wado-rs: the DICOMweb root, e.g. https://pacs:8042/dicom-web.")
    auth: HttpAuth | None = Field(None, description="wado-rs credentials: `{username, password}` or `{bearer}`.")
    tls: SocketClientTls | None = Field(
        None, description="c-move/c-get: DICOM over TLS (1.2+); wado-rs: how to verify an https server."
    )
    transfer_syntax: str = Field(
        "*", pattern=r"^(\*|[0-9.]*)$",
        description="wado-rs: transfer-syntax asked for in Accept; '*' = as stored (no transcoding), '' = the "
        "server's default (Explicit VR Little Endian).",
    )  # fmt: skip
    sop_classes: list[str] | None = Field(
        None, min_length=1,
        description="c-get: storage SOP class UIDs we accept instances of; pynetdicom's 120 storage classes when "
        "omitted. When the list is short enough, each transfer syntax gets its own presentation context so "
        "the PACS can send every instance as stored; otherwise the PACS picks one per class (and may transcode).",
    )  # fmt: skip
    into: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="c-get, wado-rs: topic each instance is published to."
    )
    skip_if_held: bool = Field(True, description="Do nothing when the engine already holds instances of the study.")
    connect_timeout_s: float = Field(10, gt=0, description="Give up connecting after this long.")
    dimse_timeout_s: float = Field(60, gt=0, description="c-move, c-get: longest wait for each DIMSE response.")
    timeout_s: float = Field(600, gt=0, description="Longest a whole retrieval may take (then retried later).")
    max_bytes: int = Field(
        1 << 30, ge=1024, description="wado-rs: largest answer accepted; a larger study is dead-lettered."
    )

    @model_validator(mode="after")
    def _per_method(self) -> RetrieveConfig:
        if self.method in ("c-move", "c-get"):
            missing = [n for n in ("host", "port", "called_ae") if getattr(self, n) is None]
            if self.method == "c-move" and self.move_destination is None:
                missing.append("move_destination")
        else:
            missing = ["base_url"] if self.base_url is None else []
            if self.base_url is not None:
                parts = urlsplit(self.base_url)
                if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
                    raise ValueError("base_url must be an http:// or https:// URL with a host and no credentials")
                if self.tls is not None and parts.scheme != "https":
                    raise ValueError("tls is set but base_url is not https://")
        if self.method != "c-move" and self.into is None:
            missing.append("into")
        if missing:
            raise ValueError(f"method {self.method} needs {', '.join(missing)}")
        if self.sop_classes and any(not UID.fullmatch(u) for u in self.sop_classes):
            raise ValueError("sop_classes must be UIDs such as 1.2.840.10008.5.1.4.1.1.2")
        return self
