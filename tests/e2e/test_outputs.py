"""Result delivery end to end as `radbridge run`, from the order (python-hl7's MLLP client) and the
head CT (dcmtk's storescu) to the systems radiologists use: for a critical finding of the built-in
reference model, an ORU^R01 and an ORM^O01 XO reach the RIS (python-hl7's MLLP server, ACKed) and a
DiagnosticReport plus the ServiceRequest's raised priority reach the FHIR server; a late
cancellation withdraws the report (ORU OBX-11 W, DiagnosticReport entered-in-error); a study whose
order was cancelled before its images produces nothing. No fake PHI in clear in the project."""

from __future__ import annotations

from pathlib import Path

from hl7.client import MLLPClient

from engine.hl7v2 import Message
from tests import phi
from tests.e2e.harness import free_port, make_project, orm, received, start_downstream, start_engine, stop, wait_for
from tests.e2e.test_imaging import storescu
from tests.e2e.test_inference import _channels as inference_channels
from tests.fhir.server import FhirServer
from tests.inference.http.servers import serve
from tests.inference.volumes import BLEED_5ML, head_ct


def _send(port: int, message: bytes) -> None:
    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(message.decode())
    assert b"MSA|AA" in (ack if isinstance(ack, bytes) else ack.encode())


def _channels(mllp: int, dicom: int, ris: int, fhir: str) -> dict[str, str]:
    fhir_destination = (f"{{name: ehr, kind: fhir, base_url: '{fhir}', release: preliminary, "
                        "patient_identifier_system: 'urn:oid:1.2.3.4.5', "
                        "accession_identifier_system: 'urn:oid:1.2.3.4.6', retry: {backoff_s: 0.2}}")  # fmt: skip
    to_ris = f"{{name: ris, kind: mllp, host: 127.0.0.1, port: {ris}, retry: {{backoff_s: 0.2}}}}"
    return {
        **inference_channels(mllp, dicom),
        "outputs.yaml": "name: outputs\nsource: {kind: outputs}\ndestinations: [{name: events, kind: topic}]\n",
        "results-ris.yaml": f"name: results-ris\nsource: {{kind: topic, topic: 'result.*'}}\n"
                            f"mapping: mappings/result-to-oru.yaml\ndestinations: [{to_ris}]\n",
        "worklist-ris.yaml": f"name: worklist-ris\nsource: {{kind: topic, topic: worklist.priority}}\n"
                             f"mapping: mappings/priority-to-orm-xo.yaml\ndestinations: [{to_ris}]\n",
        "results-ehr.yaml": f"name: results-ehr\nsource: {{kind: topic, topic: 'result.*'}}\n"
                            f"destinations: [{fhir_destination}]\n",
        "worklist-ehr.yaml": f"name: worklist-ehr\nsource: {{kind: topic, topic: worklist.priority}}\n"
                             f"destinations: [{fhir_destination}]\n",
    }  # fmt: skip


def _messages(path: Path) -> list[Message]:
    return [Message.parse(line) for line in path.read_bytes().decode().split("\n") if line] if path.exists() else []


def test_critical_finding_reaches_ris_and_ehr_and_a_late_cancellation_withdraws_it(tmp_path: Path) -> None:
    mllp, dicom, ris = free_port(), free_port(), free_port()
    fhir = FhirServer()
    fhir.put({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "routine",
              "subject": {"identifier": {"system": "urn:oid:1.2.3.4.5", "value": phi.MRN}},
              "identifier": [{"system": "urn:oid:1.2.3.4.6", "value": phi.ACCESSION}]})  # fmt: skip
    log, whole = tmp_path / "ris.log", tmp_path / "ris.hl7"
    downstream = start_downstream(ris, log, whole)
    try:
        with serve(fhir.app()) as fhir_url:
            root = make_project(tmp_path / "p", _channels(mllp, dicom, ris, fhir_url + "/fhir"))
            proc = start_engine(root)
            try:
                # a study whose order is cancelled before the images: nothing goes out for it
                _send(mllp, orm("E2E-CANCEL-1", "ACCFAKE00001", placer="PLCX1"))
                _send(mllp, orm("E2E-CANCEL-2", "ACCFAKE00001", control="CA", placer="PLCX1"))
                cancelled = head_ct(slices=4, size=16, pixel_mm=8.0, slice_mm=10.0, noise_hu=0.0)
                storescu(dicom, [_with_accession(raw, "ACCFAKE00001") for raw in cancelled.instances], tmp_path)
                # the critical one
                _send(mllp, orm("E2E-ORDER-1", phi.ACCESSION, placer="PLC1"))
                storescu(dicom, head_ct(shapes=(BLEED_5ML,), seed=3).instances, tmp_path / "bleed")
                wait_for(lambda: len(received(log)) >= 2 and fhir.all("DiagnosticReport"), timeout=60)
                wait_for(lambda: any(r.get("priority") == "stat" for r in fhir.all("ServiceRequest")), timeout=30)
                # the order is cancelled after the result went out: the report is withdrawn everywhere
                _send(mllp, orm("E2E-ORDER-2", phi.ACCESSION, control="CA", placer="PLC1"))
                wait_for(lambda: len(received(log)) >= 3, timeout=30)
                wait_for(lambda: fhir.all("DiagnosticReport")[0]["status"] == "entered-in-error", timeout=30)
            finally:
                err = stop(proc)
    finally:
        stop(downstream)
    messages = _messages(whole)
    kinds = sorted(f"{m.get('MSH-9.1')} {m.get('OBR-25')} {m.get('ORC-1')}" for m in messages)
    assert kinds == ["ORM None XO", "ORU C RE", "ORU P RE"]  # the two channels' order may interleave
    oru = next(m for m in messages if m.get("OBR-25") == "P")
    assert oru.get("OBR-18") == phi.ACCESSION and oru.get("OBX[2]-3.1") == "1386000" and oru.get("OBX[2]-8") == "AA"
    withdrawn = next(m for m in messages if m.get("OBR-25") == "C")
    assert withdrawn.get("OBX[2]-11") == "W"
    orm_xo = next(m for m in messages if m.get("MSH-9.1") == "ORM")
    assert orm_xo.get("ORC-7.6") == "S"
    [report] = fhir.all("DiagnosticReport")
    assert report["status"] == "entered-in-error" and len(fhir.all("Observation")) >= 1
    assert all("ACCFAKE00001" not in str(m) for m in messages)  # nothing for the study cancelled before
    assert phi.leaks_in_tree(root) == {}
    assert phi.leaks_in_bytes(err.encode()) == []


def _with_accession(raw: bytes, accession: str) -> bytes:
    import io

    from pydicom import dcmread

    ds = dcmread(io.BytesIO(raw))
    ds.AccessionNumber = accession
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
