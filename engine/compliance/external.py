"""Evidence that data leaving the hospital is de-identified (§164.514(b), (e)): every inference model
declared `external: true` and every destination with `deidentify:`, with the profile it gets.

A profile is checked live: its Annex E table edition is loaded, and its HIPAA method worked out
(engine.deid.method): Safe Harbor, or a limited data set, which needs a data use agreement
(attestation `dua`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from engine.compliance.attestations import current, describe
from engine.compliance.evidence import Evidence, Item, Status, worst
from engine.core.errors import ConfigError
from engine.deid import load_profile, method
from engine.deid.profile import DeidProfile
from engine.deid.table import load_table

_RETAIN = ("retain_uids", "retain_longitudinal_temporal", "retain_patient_characteristics", "retain_device_identity",
           "retain_institution_identity", "retain_safe_private", "clean_descriptors")  # fmt: skip


def _profile_facts(profile: DeidProfile) -> dict[str, Any]:
    table = load_table(profile.table_edition)  # raises ConfigError when the edition cannot be loaded
    return {
        "table_edition": profile.table_edition,
        "table_rows": len(table.rows),
        "method": method(profile),
        "options": [o for o in _RETAIN if getattr(profile, o)],
        "burned_in": profile.burned_in.mode,
        "project": profile.project,
    }


def _recipients(ev: Evidence) -> list[tuple[str, dict[str, Any], Status, str]]:
    out: list[tuple[str, dict[str, Any], Status, str]] = []
    project = ev.ctx.project
    for channel in project.channels:
        name = channel.config.name
        models = [m for m in getattr(channel.source, "models", None) or [] if getattr(m, "external", False)]
        for model in models:
            where = f"channel {name} model {model.name}@{model.version}"
            url = str(getattr(model, "url", ""))
            facts: dict[str, Any] = {"host": urlsplit(url).hostname, "https": url.startswith("https://")}
            try:
                facts |= _profile_facts(channel.source.deid)
            except ConfigError as exc:
                out.append((where, facts, "fail", f"de-identification profile does not load: {exc}"))
                continue
            if not facts["https"]:
                out.append((where, facts, "fail", "external model not reached over https"))
            else:
                out.append((where, facts, "pass", facts["method"]))
        for dest in channel.config.destinations:
            ref = dest.deidentify
            if ref is None:
                continue
            where = f"channel {name} destination {dest.name}"
            facts = {"profile": ref}
            try:
                profile = load_profile(None if ref == "basic" else project.root / ref)
                facts |= _profile_facts(profile)
            except ConfigError as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                out.append((where, facts, "fail", f"de-identification profile does not load: {first}"))
                continue
            out.append((where, facts, "pass", facts["method"]))
    return out


def deidentification(ev: Evidence) -> Item:
    found = _recipients(ev)
    details: dict[str, Any] = {where: {**facts, "status": s} for where, facts, s, _ in found}
    title, cite = "De-identification for external models and recipients", "§164.514(b), (e)"
    if not found:
        return Item("deidentification", "checklist", cite, title, "pass",
                    "no external model or de-identified destination: nothing leaves the hospital", details)  # fmt: skip
    failing = [f"{where}: {why}" for where, _, s, why in found if s == "fail"]
    if failing:
        return Item("deidentification", "checklist", cite, title, "fail", "; ".join(failing), details)
    limited = [where for where, facts, _, _ in found if facts.get("method") == "limited-data-set"]
    dua = current(ev, "dua")
    details["data_use_agreement"] = describe(ev.attestations.get("dua"))
    if limited and dua is None:
        why = (f"limited data set sent to {', '.join(limited)}: needs a data use agreement "
               "(`radbridge compliance attest dua ...`)")  # fmt: skip
        return Item("deidentification", "checklist", cite, title, "attention", why, details)
    status = worst([s for _, _, s, _ in found])
    methods = sorted({facts["method"] for _, facts, _, _ in found})
    why = f"{len(found)} external recipient(s), de-identified ({', '.join(methods)}) before anything leaves"
    if limited:
        why += f"; data use agreement attested {dua.attested_on.isoformat()}" if dua else ""
    return Item("deidentification", "checklist", cite, title, status, why, details)
