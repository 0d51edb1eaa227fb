"""JSON in and out of the FHIR builders: canonical records read without echoing their values, resources
validated against the FHIR R4B models of fhir.resources (JSON-compatible with R4 for the elements used
here), and the bytes that go on the wire or into a golden file.

The builders make plain dicts in FHIR element order, so the bytes are the builders' own: deterministic
for a given record (no random ids, no clock), whatever fhir.resources would reorder or reformat.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from fhir.resources.R4B.bundle import Bundle
from pydantic import BaseModel, ValidationError

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"

M = TypeVar("M", bound=BaseModel)


def _where(exc: ValidationError) -> str:
    """The locations of a validation error's problems (never the values, which may be PHI)."""
    places = sorted({".".join(str(part) for part in error["loc"]) or "(top)" for error in exc.errors()})
    return ", ".join(places[:8]) + (f" and {len(places) - 8} more" if len(places) > 8 else "")


def read_record(model: type[M], fields: M | Mapping[str, Any], kind: str) -> M:
    """A canonical record from its model or its fields; ValueError naming the bad fields, not their values."""
    if isinstance(fields, model):
        return fields
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(f"not a valid {kind} record (fields: {_where(exc)})") from None


def validate_bundle(bundle: Mapping[str, Any]) -> None:
    """ValueError naming the elements when `bundle` is not a valid FHIR Bundle (fhir.resources R4B)."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise ValueError(f"not a valid FHIR Bundle (elements: {_where(exc)})") from None


def compact(resource: Mapping[str, Any] | list[Any]) -> bytes:
    """The wire form: UTF-8, no spaces, keys in the builders' order."""
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pretty(resource: Mapping[str, Any] | list[Any]) -> bytes:
    """The readable form (golden files, docs): two-space indent, trailing newline."""
    return (json.dumps(resource, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
