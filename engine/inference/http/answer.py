"""The JSON result format a model server returns (upload models: in the response, at the polled URL,
or in the callback), validated into the canonical Result.

    {
      "model": "ich-detector",            optional, informational (the result is attributed to the
                                          configured model name)
      "version": "1.2.0",                 optional; when present it must equal the configured version
      "job_id": "job-123",                optional; when present it must equal the job's id
      "findings": [                       optional, default none
        {"system": "http://snomed.info/sct", "code": "50960005", "display": "Hemorrhage",
         "score": 0.93,                   0..1
         "measurements": [{"name": "volume", "value": 12.5, "unit": "mL", "code": null}],   optional
         "body_site": "brain",            optional
         "series_uid": "1.2.3...",        optional
         "instance_uids": ["1.2.3..."]}   optional
      ],
      "summary": "…",                     optional; the engine writes one from the findings when absent
      "suggested_priority": "routine",    optional: routine | urgent | asap | stat
      "disclaimer": "…"                   optional
    }

Types are checked strictly (a score given as a string is garbage, not coerced). A finding's
`critical` is set by the engine from the configured thresholds; a model's own flag is ignored.
Errors name the field at fault (e.g. `findings.0.score`), never a value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from engine.core.errors import PermanentError
from engine.core.result import Result
from engine.inference.models import UploadModel
from engine.inference.thresholds import apply_thresholds, summarize

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def garbage(where: str, detail: str) -> PermanentError:
    return PermanentError(f"{where}: model returned garbage: {detail}")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON


def load_json(body: bytes, where: str) -> Any:
    """JSON text → value; NaN/Infinity and undecodable text are garbage. Raised `from None`: the
    decoder's error holds the document."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise garbage(where, "answer is not JSON") from None


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) if isinstance(p, int) or _NAME.match(p) else "?" for p in loc) or "(document)"


def parse_result(body: bytes, config: UploadModel, job_id: str, where: str) -> Result:
    """The model's JSON answer → Result attributed to config.name/config.version, thresholds applied."""
    data = load_json(body, where)
    if not isinstance(data, dict):
        raise garbage(where, "answer is not a JSON object")
    version = data.pop("version", None)
    if version is not None and version != config.version:
        raise PermanentError(f"{where}: answer is for another model version than the configured one")
    answered = data.pop("job_id", None)
    if answered is not None and answered != job_id:
        raise PermanentError(f"{where}: answer names another job")
    data.pop("model", None)
    findings = data.get("findings")
    if isinstance(findings, list):
        data["findings"] = [{k: v for k, v in f.items() if k != "critical"} if isinstance(f, dict) else f
                            for f in findings]  # fmt: skip
    try:
        result = Result.model_validate({**data, "model": config.name, "version": config.version}, strict=True)
    except ValidationError as exc:
        fields = sorted({f"{_field(e['loc'])} ({e['type']})" for e in exc.errors()})
        raise garbage(where, ", ".join(fields[:5])) from None
    result = apply_thresholds(result, config.thresholds)
    if "summary" not in data:
        result = result.model_copy(update={"summary": summarize(result.findings)})
    return result
