"""The canonical inference result every model client returns, whatever the model spoke: what
result delivery (ORU, DiagnosticReport, SR, worklist) reads. JSON-shaped so it is stored sealed
and compared byte for byte; it carries no patient data beyond study/series/instance UIDs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Priority = Literal["routine", "urgent", "asap", "stat"]
PRIORITY_ORDER: tuple[Priority, ...] = ("routine", "urgent", "asap", "stat")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measurement(_Strict):
    name: str = Field(description="What was measured, e.g. 'volume'.")
    value: float
    unit: str = Field(description="UCUM unit, e.g. 'mL', 'mm', '[hnsf\\'U]'.")
    code: str | None = Field(None, description="Code of the measured quantity, when the model has one.")


class Finding(_Strict):
    system: str = Field(description="Code system URI or HL7 table name, e.g. 'http://snomed.info/sct'.")
    code: str
    display: str
    score: float = Field(ge=0.0, le=1.0, description="Model confidence, 0..1.")
    critical: bool = Field(False, description="Set by the engine from the model's alert thresholds.")
    measurements: list[Measurement] = Field(default_factory=list)
    body_site: str | None = Field(None, description="Where, as text or a code.")
    series_uid: str | None = None
    instance_uids: list[str] = Field(default_factory=list)


class Result(_Strict):
    model: str
    version: str
    findings: list[Finding] = Field(default_factory=list)
    summary: str = ""
    suggested_priority: Priority = "routine"
    disclaimer: str | None = Field(
        None, description="A statement the model requires with its output, e.g. 'not a clinical device'."
    )


def higher(a: Priority, b: Priority) -> Priority:
    return a if PRIORITY_ORDER.index(a) >= PRIORITY_ORDER.index(b) else b
