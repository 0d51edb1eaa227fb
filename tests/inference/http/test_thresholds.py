"""apply_thresholds (engine.inference.thresholds), the one place both HTTP clients (and any other
model client) turn scores into reported and critical findings and a suggested priority."""

from __future__ import annotations

from engine.core.result import Finding, Result
from engine.inference.models import Threshold
from engine.inference.thresholds import apply_thresholds, summarize


def finding(code: str, score: float, critical: bool = False) -> Finding:
    return Finding(
        system="http://snomed.info/sct", code=code, display=f"Finding {code}", score=score, critical=critical
    )


def result(*findings: Finding, priority: str = "routine") -> Result:
    return Result(model="m", version="1", findings=list(findings), suggested_priority=priority)  # type: ignore[arg-type]


THRESHOLDS = {"A": Threshold(critical=0.8, report=0.3), "B": Threshold(critical=0.5)}


def test_report_threshold_drops_and_critical_marks() -> None:
    out = apply_thresholds(result(finding("A", 0.29), finding("A", 0.3), finding("A", 0.8), finding("B", 0.0)),
                           THRESHOLDS)  # fmt: skip
    assert [(f.code, f.score, f.critical) for f in out.findings] == [
        ("A", 0.3, False),
        ("A", 0.8, True),
        ("B", 0.0, False),
    ]
    assert out.suggested_priority == "stat"


def test_without_threshold_kept_never_critical_and_model_flag_ignored() -> None:
    out = apply_thresholds(result(finding("C", 0.99, critical=True), priority="urgent"), THRESHOLDS)
    assert [(f.code, f.critical) for f in out.findings] == [("C", False)]
    assert out.suggested_priority == "urgent"  # the model's suggestion stands without a critical finding


def test_input_is_not_changed() -> None:
    given = result(finding("B", 0.6))
    apply_thresholds(given, THRESHOLDS)
    assert given.findings[0].critical is False and given.suggested_priority == "routine"


def test_summary() -> None:
    assert summarize([]) == "No findings at or above the reporting thresholds."
    assert summarize([finding("A", 0.912, critical=True), finding("B", 0.5)]) == (
        "Findings: Finding A (score 0.91, critical); Finding B (score 0.50)."
    )
