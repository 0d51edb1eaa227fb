"""Routing: which models a ready study goes to. Pure functions of the study.ready record and the
channel's rule sets, so `radbridge test` and the stage decide the same way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from engine.inference.config import RuleSet, When


@dataclass(frozen=True)
class Route:
    rule_set: str
    rule: str
    model: str

    @property
    def trigger(self) -> str:
        return f"{self.rule_set}/{self.rule}"


def _date(text: str) -> date | None:
    digits = "".join(ch for ch in str(text or "") if ch.isdigit())[:8]
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) if len(digits) == 8 else None
    except ValueError:
        return None


def age_years(birth_date: str, on: str) -> int | None:
    """Whole years between two DICOM/HL7 dates (YYYYMMDD...); None when either is unknown."""
    born, when = _date(birth_date), _date(on)
    if born is None or when is None or when < born:
        return None
    return when.year - born.year - ((when.month, when.day) < (born.month, born.day))


def _any(wanted: list[str] | None, *have: Any) -> bool:
    if wanted is None:
        return True
    values = {str(v).strip().upper() for v in have if v}
    return bool(values & set(wanted))


def matches(when: When, study: Mapping[str, Any]) -> bool:
    modalities = list(study.get("modalities") or []) + [study.get("modality")]
    body_parts = list(study.get("body_parts") or []) + [study.get("body_part")]
    procedure_codes = [study.get("procedure_code")] + [o.get("procedure_code") for o in study.get("orders") or []]
    if not (
        _any(when.modality, *modalities)
        and _any(when.body_part, *body_parts)
        and _any(when.procedure_code, *procedure_codes)
        and _any(when.calling_ae, study.get("calling_ae"))
        and _any(when.site, study.get("site"))
    ):
        return False
    if when.channel is not None and study.get("channel") not in when.channel:
        return False
    if when.priority is not None and str(study.get("priority") or "routine") not in when.priority:
        return False
    if when.age is not None:
        age = age_years(str(study.get("birth_date") or ""), str(study.get("study_date") or ""))
        if age is None:  # an age band cannot be decided without both dates: the rule does not apply
            return False
        if (when.age.min is not None and age < when.age.min) or (when.age.max is not None and age > when.age.max):
            return False
    return True


def route(rule_sets: list[RuleSet], study: Mapping[str, Any]) -> list[Route]:
    """Every (rule, model) the study goes to; a model chosen by two rules runs once (the first)."""
    routes: dict[str, Route] = {}
    for rule_set in rule_sets:
        for rule in rule_set.rules:
            if not matches(rule.when, study):
                continue
            for model in rule.models:
                routes.setdefault(model, Route(rule_set.name, rule.name, model))
            if rule_set.match == "first":
                break
    return list(routes.values())
