"""A model's alert thresholds applied to its result, the same way for every kind of model.

The site, not the model, decides what is critical: thresholds are configuration whose changes are
audited, so a finding's `critical` flag is always recomputed here, whatever the model said.
"""

from __future__ import annotations

from engine.core.result import Finding, Result, higher
from engine.inference.models import Threshold


def apply_thresholds(result: Result, thresholds: dict[str, Threshold]) -> Result:
    """Per finding code: drop findings scoring below `report`; mark `critical` those at or above
    `critical` (no threshold declared: kept, never critical). Any critical finding raises the
    suggested priority to stat; otherwise the model's suggestion stands."""
    kept: list[Finding] = []
    for finding in result.findings:
        threshold = thresholds.get(finding.code)
        if threshold is not None and finding.score < threshold.report:
            continue
        critical = threshold is not None and finding.score >= threshold.critical
        kept.append(finding.model_copy(update={"critical": critical}))
    priority = result.suggested_priority
    if any(f.critical for f in kept):
        priority = higher(priority, "stat")
    return result.model_copy(update={"findings": kept, "suggested_priority": priority})


def summarize(findings: list[Finding]) -> str:
    """One line naming each finding with its score, for models that give no summary of their own."""
    if not findings:
        return "No findings at or above the reporting thresholds."
    items = [f"{f.display} (score {f.score:.2f}{', critical' if f.critical else ''})" for f in findings]
    return "Findings: " + "; ".join(items) + "."
