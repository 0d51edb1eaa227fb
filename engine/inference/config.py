"""What an inference channel file says (source kind `inference`): the models it may call and the
routing rules that choose them for each ready study."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.core.result import Priority
from engine.deid.profile import DeidProfile
from engine.inference.models import ModelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _upper(values: list[str] | None) -> list[str] | None:
    return None if values is None else [v.strip().upper() for v in values]


class Age(_Strict):
    min: int | None = Field(None, ge=0, description="Lowest age in whole years (inclusive).")
    max: int | None = Field(None, ge=0, description="Highest age in whole years (inclusive).")


class When(_Strict):
    """Every condition given must hold; a list matches any of its values (case-insensitive)."""

    channel: list[str] | None = Field(None, description="Imaging channels the study came in on, e.g. [pacs-images].")
    modality: list[str] | None = Field(None, description="DICOM modalities of the study, e.g. [CT].")
    body_part: list[str] | None = Field(None, description="Body Part Examined (0018,0015) or the order's, e.g. [HEAD].")
    procedure_code: list[str] | None = Field(None, description="The order's procedure code (OBR-4.1 / IPC).")
    calling_ae: list[str] | None = Field(None, description="AE title of the modality or PACS that sent the images.")
    site: list[str] | None = Field(None, description="Institution Name (0008,0080) of the images.")
    priority: list[Priority] | None = Field(None, description="The order's priority.")
    age: Age | None = Field(None, description="Patient age band at the study date, in years.")

    _norm = field_validator("modality", "body_part", "procedure_code", "calling_ae", "site")(_upper)


class Rule(_Strict):
    name: str = Field(description="Shown in audit entries and jobs as the trigger.")
    when: When = Field(default_factory=When, description="Conditions; an empty `when` matches every study.")
    models: list[str] = Field(
        min_length=1, description="Names of declared models to run on a matching study (every version not retired)."
    )


class RuleSet(_Strict):
    name: str
    match: Literal["first", "all"] = Field(
        "first", description="'first': only the first matching rule applies; 'all': every matching rule does."
    )
    rules: list[Rule] = Field(min_length=1)


class InferenceConfig(_Strict):
    topics: list[str] = Field(
        default_factory=lambda: ["study.ready", "study.cancelled", "study.updated"],
        description="Internal topics read: ready studies to route, cancelled ones whose jobs stop, updated priorities.",
    )
    models: list[ModelConfig] = Field(min_length=1, description="Models this channel may call, each name+version.")
    rule_sets: list[RuleSet] = Field(
        min_length=1, description="Every rule set is evaluated; the models of all sets' matches run, once each."
    )
    deid: DeidProfile = Field(
        default_factory=DeidProfile,
        description="De-identification applied to every study sent to an `external: true` model (PS3.15 Annex E).",
    )
    workers: int = Field(4, ge=1, description="Jobs this engine process runs at once (per-model limits also apply).")
    poll_s: float = Field(1.0, gt=0, description="How often queued jobs are looked for when nothing woke the worker.")
    backoff_s: float = Field(10.0, gt=0, description="First retry delay; doubles per attempt.")
    backoff_max_s: float = Field(600.0, gt=0, description="Longest retry delay.")
    emit_shadow: bool = Field(
        False, description="Also publish shadow-model results (as inference.shadow) for admin views; never clinical."
    )

    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Rules name declared models; names+versions are unique (positions for `radbridge lint`)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        names: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        for i, model in enumerate(self.models):
            if (model.name, model.version) in seen:
                problems.append((("models", i, "version"), f"model '{model.name}' {model.version} is declared twice"))
            seen.add((model.name, model.version))
            names[model.name] = i
        for s, rule_set in enumerate(self.rule_sets):
            for r, rule in enumerate(rule_set.rules):
                for m, name in enumerate(rule.models):
                    if name not in names:
                        known = ", ".join(sorted(names))
                        problems.append(
                            (("rule_sets", s, "rules", r, "models", m), f"unknown model '{name}' (declared: {known})")
                        )
        return problems

    def versions(self, name: str) -> list[ModelConfig]:
        """Every declared version of a model: the registry says which are active, shadow or retired."""
        return [m for m in self.models if m.name == name]
