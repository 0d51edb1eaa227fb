"""What an operator sees of a study: state, counts, timers and its orders; PHI masked unless asked."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine.correlation.repo import Repo, StudyRow
from engine.dicom import InstanceHeader

PHI_FIELDS = ("patient_name", "patient_id", "birth_date", "accessions", "study_uid")


def mask(value: Any) -> str:
    """Whether there is a value, and nothing of it (not even a first letter or a length)."""
    return "[masked]" if value else ""


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if value else "-"


def study_line(study: StudyRow) -> str:
    timers = []
    if study.stable_due:
        timers.append(f"quiet-until={_when(study.stable_due)}")
    if study.wait_due:
        timers.append(f"wait-until={_when(study.wait_due)}")
    reason = f" ({study.reason})" if study.reason else ""
    return (
        f"{study.id} {study.channel} {study.state}{reason} instances={study.instances} "
        f"first={_when(study.first_at)} last={_when(study.last_at)} {' '.join(timers) or '-'}"
    )


def describe(repo: Repo, messages: Any, study: StudyRow, *, phi: bool) -> list[str]:
    """Lines for `radbridge studies show`; the caller audits when `phi` is set."""
    content = repo.content(study.key)
    header = InstanceHeader.from_dict(json.loads(messages.read(study.header_message, "transformed")))
    lines = [
        f"id: {study.id}",
        f"channel: {study.channel}",
        f"state: {study.state}" + (f" ({study.reason})" if study.reason else ""),
        f"instances held: {content.count} in {content.series} series (at last quiet period: {study.instances})",
        f"modalities: {', '.join(content.modalities) or '-'}; body parts: {', '.join(content.body_parts) or '-'}",
        f"first instance: {_when(study.first_at)}; last: {_when(study.last_at)}",
        f"quiet period ends: {_when(study.stable_due)}; unmatched wait ends: {_when(study.wait_due)}",
        f"study.ready sent for current content: {'yes' if study.triggered_hash == content.hash else 'no'}",
    ]
    for name in PHI_FIELDS:
        value = getattr(header, name)
        shown = (", ".join(value) if isinstance(value, tuple) else value) if phi else mask(value)
        lines.append(f"{name}: {shown or '-'}")
    for order in repo.orders_of_study(study.key):
        lines.append(f"order {order.id}: {order.state}, priority {order.priority}, updated {_when(order.updated_at)}")
    return lines
