"""The imaging side end to end, with real peers on 127.0.0.1 and the engine as `radbridge run`:
python-hl7's mllp_send sends the order, dcmtk's storescu sends the images; Orthanc forwards a study
and notifies the engine through its Lua webhook; the engine retrieves a study it does not hold from
Orthanc by C-MOVE. Each case ends in exactly one study.ready; no fake PHI in clear on disk or in logs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hl7.client import MLLPClient

from engine.correlation.repo import Repo
from engine.runtime.context import open_context
from tests import phi
from tests.e2e.harness import free_port, make_project, orm, start_engine, stop, wait_for
from tests.orthanc import make_study, start_orthanc

TOKEN = "e2e-webhook-token-0123456789"
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _channels(mllp: int, dicom: int, webhook: int, orthanc_dicom: int | None = None) -> dict[str, str]:
    retrieve = ""
    if orthanc_dicom:  # one line: it is spliced into an indented block below
        retrieve = (
            "  - {name: retrieve, kind: dicom-retrieve, method: c-move, host: 127.0.0.1, "
            f"port: {orthanc_dicom}, called_ae: ORTHANC, calling_ae: RADBRIDGE, move_destination: RADBRIDGE, "
            "retry: {backoff_s: 0.5}}"
        )
    return {
        "orders.yaml": f"""\
            name: orders
            source: {{kind: mllp, host: 127.0.0.1, port: {mllp}, accept_types: [ORM^O01]}}
            mapping: mappings/orm-to-order.yaml
            destinations: [{{name: orders, kind: topic}}]
            """,
        "images.yaml": f"""\
            name: images
            source: {{kind: dicom, host: 127.0.0.1, port: {dicom}, ae_title: RADBRIDGE}}
            study: {{quiet_s: 1}}
            """,
        "notify.yaml": f"""\
            name: notify
            source:
              kind: webhook
              host: 127.0.0.1
              port: {webhook}
              format: orthanc
              auth: {{bearer: "${{WEBHOOK_TOKEN}}"}}
            destinations:
              - {{name: correlate, kind: topic, topic: study.notified}}
            {retrieve}
            """,
        "correlation.yaml": """\
            name: correlation
            source: {kind: correlation, sweep_s: 0.2, unmatched_study: {wait_s: 60}}
            destinations: [{name: events, kind: topic, retry: {backoff_s: 0.2}}]
            """,
    }


def _lua(webhook: int, forward: bool) -> str:
    # RestApiPost rather than SendToModality: Orthanc 1.10's Lua SendToModality of a study fails here
    # ("Unable to read attachment"), while the REST route it calls works.
    send = "RestApiPost('/modalities/radbridge/store', DumpJson({Resources={studyId}, Synchronous=true}, true))\n"
    send = send if forward else ""
    return f"""
function OnStableStudy(studyId, tags, metadata)
   {send}   local study = ParseJson(RestApiGet('/studies/' .. studyId))
   local body = {{ ChangeType = 'StableStudy', ID = studyId,
      MainDicomTags = {{ StudyInstanceUID = study['MainDicomTags']['StudyInstanceUID'],
                        AccessionNumber = study['MainDicomTags']['AccessionNumber'] }},
      PatientMainDicomTags = {{ PatientID = study['PatientMainDicomTags']['PatientID'] }} }}
   HttpPost('http://127.0.0.1:{webhook}/notify', DumpJson(body, true),
            {{ ['Authorization'] = 'Bearer {TOKEN}', ['Content-Type'] = 'application/json' }})
end
"""


def _ready(root: Path) -> list[dict]:
    ctx = open_context(root)
    try:
        views = [v for v in ctx.messages.list(channel="correlation", limit=200) if v.kind == "record study.ready"]
        return [json.loads(ctx.messages.read(v.id))["fields"] for v in views]
    finally:
        ctx.close()


def _states(root: Path) -> list[str]:
    ctx = open_context(root)
    try:
        return [s.state for s in Repo(ctx.db).studies()]
    finally:
        ctx.close()


def storescu(port: int, instances: list[bytes], folder: Path) -> list[Path]:
    """Send instances with dcmtk's storescu (Nagle off, as DESIGN asks of peers); returns the files."""
    files = []
    folder.mkdir(parents=True, exist_ok=True)
    for n, raw in enumerate(instances):
        files.append(folder / f"i{n}.dcm")
        files[-1].write_bytes(raw)
    done = subprocess.run(
        ["storescu", "-aec", "RADBRIDGE", "127.0.0.1", str(port), *map(str, files)],
        env=PEER_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    return files


def _send_order(port: int) -> None:
    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(orm("E2E-ORDER-1", phi.ACCESSION).decode())
    assert b"MSA|AA" in (ack if isinstance(ack, bytes) else ack.encode())


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)


def _no_phi(root: Path, err: str) -> None:
    assert phi.leaks_in_tree(root) == {}
    assert phi.leaks_in_bytes(err.encode()) == []


def test_order_by_mllp_then_images_by_storescu(tmp_path: Path, engine_env: None) -> None:
    mllp, dicom, webhook = free_port(), free_port(), free_port()
    root = make_project(tmp_path / "p", _channels(mllp, dicom, webhook))
    _, instances = make_study(3)
    proc = start_engine(root)
    try:
        _send_order(mllp)
        files = storescu(dicom, instances, tmp_path)
        wait_for(lambda: _ready(root), timeout=30)
        subprocess.run(["storescu", "-aec", "RADBRIDGE", "127.0.0.1", str(dicom), str(files[0])],
                       env=PEER_ENV, capture_output=True, timeout=60, check=True)  # a duplicate instance  # fmt: skip
        wait_for(lambda: _states(root) == ["ready"], timeout=10)
    finally:
        err = stop(proc)
    [ready] = _ready(root)
    assert ready["instances"] == 3 and ready["matched"] and ready["orders"][0]["accession"] == phi.ACCESSION
    _no_phi(root, err)


def test_orthanc_forwards_and_notifies_then_retrieval_of_a_study_not_held(tmp_path: Path, engine_env: None) -> None:
    mllp, dicom, webhook = free_port(), free_port(), free_port()
    forwarding = start_orthanc(tmp_path / "o1", stable_age=1, lua=[_lua(webhook, forward=True)],
                               modalities={"radbridge": ["RADBRIDGE", "127.0.0.1", dicom]})  # fmt: skip
    holding = start_orthanc(tmp_path / "o2", stable_age=60, modalities={"radbridge": ["RADBRIDGE", "127.0.0.1", dicom]})
    root = make_project(tmp_path / "p", _channels(mllp, dicom, webhook, orthanc_dicom=holding.dicom_port))
    proc = start_engine(root)
    try:
        _send_order(mllp)
        # 1. Orthanc forwards the study and posts OnStableStudy to the webhook.
        _, first = make_study(2)
        forwarding.upload_study(first)
        wait_for(lambda: len(_ready(root)) == 1, timeout=40)
        # 2. A study only the second Orthanc holds: the notification makes the engine C-MOVE it.
        uid, second = make_study(2)
        holding.upload_study(second)
        body = {"ChangeType": "StableStudy", "ID": "x", "MainDicomTags": {"StudyInstanceUID": uid}}
        import httpx

        answer = httpx.post(f"http://127.0.0.1:{webhook}/notify", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
        assert answer.status_code == 202
        wait_for(lambda: len(_ready(root)) == 2, timeout=40)  # same accession: the order covers both studies
    finally:
        err = stop(proc)
        forwarding.stop(0.3)
        holding.stop(0.3)
    assert sorted(r["study_uid"] for r in _ready(root))[0] and uid in {r["study_uid"] for r in _ready(root)}
    assert _states(root) == ["ready", "ready"]
    _no_phi(root, err)
