"""Canonical records: what mappings produce from HL7 (and read back to build outbound messages).

Records are flat where they can be: one level of named fields, so a mapping path is `order.accession`
and a stored record is one small JSON object. The result records nest (a result's findings, the
orders a result or a priority update concerns): paths read them as `result.result.findings[*].code`.
Each model forbids unknown fields and documents every field; a mapped record is validated against
its model before it leaves the mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

from engine.core.records import (
    MODELS,
    FinalReport,
    InferenceResult,
    Order,
    OrderRef,
    PatientEvent,
    PriorityUpdate,
)

__all__ = [
    "MODELS", "FinalReport", "InferenceResult", "Order", "OrderRef", "PatientEvent", "PriorityUpdate", "Record",
    "field_names",
]  # fmt: skip


_KEYS = {name: f"{encode_basestring(name)}:" for model in MODELS.values() for name in model.model_fields}


def field_names(record_type: str) -> list[str]:
    return list(MODELS[record_type].model_fields)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Record:
    """One mapped record. `fields` holds only the fields that have a value, as Python values
    (str, int, Decimal, date, aware datetime); `topic` is where the runtime publishes it."""

    type: str
    topic: str | None
    fields: dict[str, Any] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: dates and times as ISO 8601, decimals as strings."""
        return json.loads(self.to_json())

    def to_json(self) -> bytes:
        """Deterministic JSON (sorted keys, no spaces, UTF-8): equal records give equal bytes."""
        # Written by hand for the strings, dates and datetimes mapped records hold: the same bytes
        # json.dumps gives, at two thirds of its cost (it calls default= for each date and sorts
        # item pairs). Anything else goes to json.dumps.
        fields = self.fields
        parts = []
        try:
            for name in sorted(fields):
                value = fields[name]
                key = _KEYS.get(name) or f"{encode_basestring(name)}:"
                kind = type(value)
                if kind is str:
                    parts.append(key + encode_basestring(value))
                elif kind is datetime or kind is date:  # ISO 8601 text needs no escaping
                    parts.append(f'{key}"{value.isoformat()}"')
                else:
                    return self._dumps()
        except TypeError:  # a name that is not a string
            return self._dumps()
        topic = "null" if self.topic is None else encode_basestring(self.topic)
        return f'{{"fields":{{{",".join(parts)}}},"topic":{topic},"type":{encode_basestring(self.type)}}}'.encode()

    def _dumps(self) -> bytes:
        body = {"type": self.type, "topic": self.topic, "fields": self.fields}
        return json.dumps(
            body, default=_json_default, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        """Read `to_json` output back; canonical records are re-validated (types restored)."""
        body = json.loads(data)
        kind, fields = body["type"], body["fields"]
        model = MODELS.get(kind)
        if model is not None:
            fields = model.model_validate(fields).model_dump(exclude_none=True)
        return cls(kind, body.get("topic"), fields)

    def __repr__(self) -> str:  # never the values: they are PHI
        return f"Record(type={self.type!r}, topic={self.topic!r}, fields=[{', '.join(sorted(self.fields))}])"
