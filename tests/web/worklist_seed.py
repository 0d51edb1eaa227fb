"""Studies, orders, jobs, AI reports and priority raises written straight into a store, as the
correlation, inference and outputs stages leave them, with exact times: for the worklist, studies
and monitoring tests that need a precise state (the end-to-end test runs the real pipeline)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher

from engine.core.ids import new_id
from engine.runtime.context import Context
from engine.security.access import ROLES
from engine.security.passwords import Passwords
from engine.store.tables import AiReport, InferenceJob, Instance, Order, PriorityRaise, Study
from engine.store.users import Users
from engine.store.writer import WriteItem
from engine.web.app import create_app
from engine.web.site import Site
from tests import phi
from tests.inference.http.servers import serve
from tests.web.conftest import PASSWORD, Web

NAME = f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"
ICH = ("http://snomed.info/sct", "1386000", "Intracranial hemorrhage")
FRACTURE = ("http://snomed.info/sct", "263204007", "Fracture")


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Seeded:
    study_id: str
    study_key: str
    accession: str
    mrn: str
    order_ids: list[str]


class Seed:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.n = 0

    def _message(
        self, item: WriteItem, channel: str, body: dict[str, Any], parts: dict[str, bytes] | None = None
    ) -> str:
        message_id, stored = self.ctx.messages.receive(channel, "record test", json.dumps(body).encode(), parts=parts)
        item.extend(stored)
        return message_id

    def study(self, *, priority: str = "routine", waited_min: float = 10, modality: str = "CT",
              procedure: tuple[str, str] = ("CTHEAD", "CT head without contrast"), state: str = "ready",
              order_state: str = "ready", with_order: bool = True, now: datetime | None = None) -> Seeded:  # fmt: skip
        self.n += 1
        now = now or datetime.now(UTC)
        accession, mrn = f"{phi.ACCESSION}{self.n}", f"{phi.MRN}{self.n}"
        key, study_id = _h(f"study{self.n}{new_id()}"), new_id()
        item = WriteItem()
        header = {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": f"1.2.3.{self.n}.1",
                  "study_uid": f"1.2.3.{self.n}", "series_uid": f"1.2.3.{self.n}.9",
                  "transfer_syntax": "1.2.840.10008.1.2.1",
                  "sha256": _h("x"), "size": 1, "modality": modality, "body_part": "HEAD", "accessions": [accession],
                  "patient_id": mrn, "patient_name": NAME, "birth_date": phi.DOB,
                  "study_description": "CT HEAD (from the images)"}  # fmt: skip
        header_id = self._message(item, "images", {"dicom": True}, {"transformed": json.dumps(header).encode()})
        last = now - timedelta(minutes=waited_min)
        item.inserts.append((Study.__table__, {
            "key": key, "id": study_id, "channel": "images", "study_uid_idx": _h(f"uid{key}"), "state": state,
            "reason": None, "instances": 1, "first_at": last - timedelta(minutes=1), "last_at": last,
            "stable_due": None, "wait_due": None, "header_message": header_id, "content_hash": _h(key),
            "triggered_hash": _h(key), "version": 1, "updated_at": now,
        }))  # fmt: skip
        item.inserts.append((Instance.__table__, {
            "study_key": key, "sop_idx": _h(f"sop{key}"), "series_idx": _h(f"series{key}"), "message_id": header_id,
            "sop_class": header["sop_class_uid"], "modality": modality, "body_part": "HEAD",
            "transfer_syntax": header["transfer_syntax"], "sha256": _h("x"), "size": 1, "received_at": last,
        }))  # fmt: skip
        orders = []
        if with_order:
            fields = {"event": "accepted", "accession": accession, "patient_id": mrn, "patient_name": NAME,
                      "priority": priority, "procedure_code": procedure[0], "procedure_text": procedure[1],
                      "modality": modality}  # fmt: skip
            order_msg = self._message(item, "orders", {"type": "order", "topic": "order.accepted", "fields": fields})
            order_id = new_id()
            item.inserts.append((Order.__table__, {
                "id": order_id, "key": _h(f"order{order_id}"), "state": order_state, "priority": priority,
                "mrn_idx": _h(mrn), "study_key": key, "message_id": order_msg, "expires_at": None, "version": 1,
                "created_at": last, "updated_at": now,
            }))  # fmt: skip
            orders.append(order_id)
        self.ctx.writer.write(item)
        return Seeded(study_id, key, accession, mrn, orders)

    def result(self, study: Seeded, *, findings: list[tuple[tuple[str, str, str], float, bool]] | None = None,
               model: str = "ich-ct", version: str = "1.2.0", status: str = "preliminary", raise_to: str | None = None,
               finished: datetime | None = None, clinical: bool = True) -> tuple[str, str]:  # fmt: skip
        """A completed job with its result; for a clinical one its AI report (and a raise). (report id, job id)"""
        findings = [(ICH, 0.95, True)] if findings is None else findings
        finished = finished or datetime.now(UTC)
        job_id = new_id()
        result = {"model": model, "version": version, "suggested_priority": raise_to or "routine",
                  "findings": [{"system": s, "code": c, "display": d, "score": score, "critical": critical}
                               for (s, c, d), score, critical in findings]}  # fmt: skip
        fields = {"job_id": job_id, "study_id": study.study_id, "accessions": [study.accession],
                  "patient_id": study.mrn, "patient_name": NAME, "model": model, "version": version,
                  "trigger": "neuro/head-ct", "clinical": clinical, "critical": any(f[2] for f in findings),
                  "result": result, "completed_at": finished.isoformat(), "status": status,
                  "report_id": f"{study.study_id}/{model}"}  # fmt: skip
        item = WriteItem()
        result_msg = self._message(
            item, "inference", {"type": "result", "topic": "inference.completed", "fields": fields}
        )
        item.inserts.append((InferenceJob.__table__, {
            "id": job_id, "study_id": study.study_id, "study_uid_idx": None, "content_hash": _h(job_id), "model": model,
            "model_version": version, "state": "completed", "priority": 3, "attempts": 1, "due_at": None,
            "holder": None, "lease_until": None, "channel": "inference", "trigger": "neuro/head-ct",
            "request_message": result_msg, "result_message": result_msg, "clinical": clinical, "input_digest": None,
            "output_digest": None, "error": None, "revision": 2, "created_at": finished - timedelta(seconds=5),
            "started_at": finished - timedelta(seconds=4), "finished_at": finished, "updated_at": finished,
        }))  # fmt: skip
        report_id = f"{study.study_id}/{model}"
        if clinical:
            item.inserts.append((AiReport.__table__, {
                "report_id": report_id, "study_id": study.study_id, "model": model, "version": version,
                "job_id": job_id,
                "status": status, "revision": 1, "message_id": result_msg, "critical": any(f[2] for f in findings),
                "final_message": None, "final_status": None, "row_version": 0, "created_at": finished,
                "updated_at": finished,
            }))  # fmt: skip
        if raise_to:
            item.inserts.append((PriorityRaise.__table__, {
                "study_id": study.study_id, "level": raise_to, "update_id": "RB" + _h(job_id)[:18], "job_id": job_id,
                "message_id": result_msg, "raised_at": finished,
            }))  # fmt: skip
        self.ctx.writer.write(item)
        return report_id, job_id


@contextlib.contextmanager
def web_over(ctx: Context) -> Iterator[Web]:
    """The web application over an existing engine context (a running engine's, another node's), served
    on a loopback port, with one user per role as in the `web` fixture."""
    fast = Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, ctx.project.engine.auth, hasher=fast)
    site = Site.open(ctx, lambda: (True, {"store": "ok"}), users=users)
    for role in ROLES:
        name = role.replace("_", "-")
        if users.get(name) is None:
            users.add(name, f"Test {role}", role, None if role == "service" else PASSWORD, "user:test")
    app = create_app(site)
    with serve(app) as url:
        world = Web(ctx, site, url, {}, site_app=app)
        try:
            yield world
        finally:
            for client in world.clients:
                client.close()
