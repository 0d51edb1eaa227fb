"""Routing rules: which models a study.ready goes to, and lint positions for a rule naming an
undeclared model."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import lint
from engine.inference.config import InferenceConfig, RuleSet
from engine.inference.rules import age_years, route

MODELS = [
    {"name": "head-ct", "version": "1", "kind": "builtin"},
    {"name": "chest", "version": "2", "kind": "builtin"},
    {"name": "peds", "version": "1", "kind": "builtin"},
]

STUDY = {
    "channel": "pacs-images", "modality": "CT", "modalities": ["CT"], "body_part": "HEAD", "body_parts": ["HEAD"],
    "procedure_code": "CTHEAD", "calling_ae": "CT_SCANNER_1", "site": "General Hospital", "priority": "stat",
    "birth_date": "19510214", "study_date": "20261120", "orders": [{"procedure_code": "CTHEAD"}],
}  # fmt: skip


def sets(*rule_sets: dict) -> list[RuleSet]:
    return InferenceConfig.model_validate({"models": MODELS, "rule_sets": list(rule_sets)}).rule_sets


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({}, True),
        ({"modality": ["ct"]}, True),
        ({"modality": ["MR"]}, False),
        ({"body_part": ["BRAIN", "HEAD"]}, True),
        ({"procedure_code": ["CTCHEST"]}, False),
        ({"calling_ae": ["ct_scanner_1"]}, True),
        ({"calling_ae": ["MR_1"]}, False),
        ({"site": ["GENERAL HOSPITAL"]}, True),
        ({"site": ["Other Clinic"]}, False),
        ({"priority": ["stat", "asap"]}, True),
        ({"priority": ["routine"]}, False),
        ({"age": {"min": 18}}, True),
        ({"age": {"max": 17}}, False),
        ({"age": {"min": 75, "max": 75}}, True),  # 75 on 2026-11-20 (born 1951-02-14)
        ({"channel": ["pacs-images"]}, True),
        ({"channel": ["other-pacs"]}, False),
        ({"modality": ["CT"], "site": ["Other Clinic"]}, False),  # every condition must hold
    ],
)
def test_each_condition(when: dict, expected: bool) -> None:
    rule_sets = sets({"name": "s", "rules": [{"name": "r", "when": when, "models": ["head-ct"]}]})
    assert bool(route(rule_sets, STUDY)) is expected


def test_first_match_stops_and_all_match_collects() -> None:
    rules = [
        {"name": "head", "when": {"modality": ["CT"]}, "models": ["head-ct"]},
        {"name": "any", "models": ["chest"]},
    ]
    first = route(sets({"name": "s", "match": "first", "rules": rules}), STUDY)
    assert [(r.trigger, r.model) for r in first] == [("s/head", "head-ct")]
    every = route(sets({"name": "s", "match": "all", "rules": rules}), STUDY)
    assert [(r.trigger, r.model) for r in every] == [("s/head", "head-ct"), ("s/any", "chest")]


def test_every_rule_set_applies_and_a_model_runs_once() -> None:
    routes = route(
        sets(
            {"name": "a", "rules": [{"name": "r1", "models": ["head-ct"]}]},
            {"name": "b", "rules": [{"name": "r2", "models": ["head-ct", "peds"]}]},
        ),
        STUDY,
    )
    assert [(r.trigger, r.model) for r in routes] == [("a/r1", "head-ct"), ("b/r2", "peds")]


def test_no_match_is_an_empty_route() -> None:
    assert route(sets({"name": "s", "rules": [{"name": "r", "when": {"modality": ["MR"]}, "models": ["chest"]}]}),
                 STUDY) == []  # fmt: skip


def test_age_band_needs_both_dates() -> None:
    rule_sets = sets({"name": "s", "rules": [{"name": "r", "when": {"age": {"min": 0}}, "models": ["peds"]}]})
    assert route(rule_sets, {**STUDY, "birth_date": ""}) == []
    assert age_years("20100301", "20260228") == 15
    assert age_years("20100301", "20260301") == 16
    assert age_years("2010", "20260301") is None


def test_lint_positions_an_unknown_model(tmp_path: Path) -> None:
    text = """name: inference
source:
  kind: inference
  models:
    - {name: head-ct, version: "1", kind: builtin}
    - {name: head-ct, version: "1", kind: builtin}
  rule_sets:
    - name: s
      rules:
        - name: r
          models: [head-ct, hed-ct]
destinations:
  - {name: events, kind: topic}
"""
    (tmp_path / "channels").mkdir()
    path = tmp_path / "channels" / "inference.yaml"
    path.write_text(text)
    found = [str(d) for d in lint([path])]
    assert any(d.endswith("inference.yaml:11:29: unknown model 'hed-ct' (declared: head-ct)") for d in found), found
    assert any(d.endswith("inference.yaml:6:32: model 'head-ct' 1 is declared twice") for d in found), found
