"""The `dicom-sr` destination against a real Orthanc: the SR is filed into the source study, byte for
byte as built; a correction and a withdrawal join the same series naming their predecessors. Also
what it refuses (and never sends), its configuration, and the documented channel example."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import dcmread

from engine.connectors.dicom.sr_destination import DicomSrDestination
from engine.core.component import Outbound
from engine.core.errors import PermanentError
from engine.dicom.sr import COMPREHENSIVE_SR
from tests import phi
from tests.connectors.fakes import Recorder
from tests.connectors.test_dicom_source import context, no_phi_in_logs
from tests.dicom.test_sr import finding, flatten, record, with_findings
from tests.dicomdata import dataset_part
from tests.orthanc import Orthanc, free_port, make_study, running_orthanc

__all__ = ["no_phi_in_logs"]  # the autouse fixture: every log line of these tests is free of fake PHI

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc-sr")) as server:
        yield server


def destination(port: int, **options: Any) -> DicomSrDestination:
    config = DicomSrDestination.Config.model_validate(
        {"host": "127.0.0.1", "port": port, "called_ae": "ORTHANC", "connect_timeout_s": 2, **options}
    )
    return DicomSrDestination(config, context(Recorder()))


def message(fields: dict[str, Any], message_id: str = "m1") -> Outbound:
    body = json.dumps({"type": "result", "topic": "result.preliminary", "fields": fields}).encode()
    return Outbound(message_id, "pacs-sr", body, "record")


def source_study(orthanc: Orthanc) -> tuple[str, str, str, list[str]]:
    """(Orthanc study id, Study Instance UID, Series Instance UID, SOP Instance UIDs) of an uploaded CT study."""
    study_uid, instances = make_study(2)
    study_id = orthanc.upload_study(instances)
    headers = [dcmread(io.BytesIO(raw), stop_before_pixels=True) for raw in instances]
    return study_id, study_uid, str(headers[0].SeriesInstanceUID), [str(h.SOPInstanceUID) for h in headers]


def stored(orthanc: Orthanc, sop_instance_uid: str) -> tuple[dict[str, Any], bytes]:
    """Orthanc's record of an instance, found by its SOP Instance UID, and its file."""
    with orthanc.client() as http:
        [hit] = [h for h in http.post("/tools/lookup", content=sop_instance_uid).json() if h["Type"] == "Instance"]
        info = http.get(f"/instances/{hit['ID']}").json()
    return info, orthanc.instance_file(hit["ID"])


async def test_the_sr_is_filed_into_the_source_study(orthanc: Orthanc) -> None:
    study_id, study_uid, series_uid, sops = await asyncio.to_thread(source_study, orthanc)
    fields = with_findings([finding(series_uid=series_uid, instance_uids=sops)], study_uid=study_uid)
    dest = destination(orthanc.dicom_port, called_ae=orthanc.aet)
    delivered = await dest.send(message(fields))
    await dest.close()
    assert delivered.detail == "SR preliminary revision 1 stored (C-STORE 0x0000)"
    sent = dcmread(io.BytesIO(delivered.response or b""))
    info, file = await asyncio.to_thread(stored, orthanc, str(sent.SOPInstanceUID))
    assert dataset_part(file) == dataset_part(delivered.response or b"")  # stored as built
    with orthanc.client() as http:
        series = http.get(f"/instances/{info['ID']}/series").json()
    assert series["ParentStudy"] == study_id  # filed into the source study, beside its images
    back = dcmread(io.BytesIO(file))
    assert back.SOPClassUID == COMPREHENSIVE_SR and back.StudyInstanceUID == study_uid
    assert flatten(back.ContentSequence) == flatten(sent.ContentSequence)
    images = [row[4] for row in flatten(back.ContentSequence) if row[2] == "IMAGE"]
    assert images == [f"1.2.840.10008.5.1.4.1.1.2/{uid}" for uid in sops * 2]  # library, then the group's sources
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence] == sops


async def test_a_correction_and_a_withdrawal_follow_in_the_same_series(orthanc: Orthanc) -> None:
    _, study_uid, series_uid, sops = await asyncio.to_thread(source_study, orthanc)
    base = with_findings([finding(series_uid=series_uid, instance_uids=sops)], study_uid=study_uid)
    dest = destination(orthanc.dicom_port, called_ae=orthanc.aet, uid_root="1.2.826.0.1.3680043.10.999")
    sent = []
    for n, (status, revision) in enumerate([("preliminary", 1), ("corrected", 2), ("withdrawn", 3)]):
        delivered = await dest.send(message({**base, "status": status, "revision": revision}, f"m{n}"))
        assert delivered.detail == f"SR {status} revision {revision} stored (C-STORE 0x0000)"
        sent.append(dcmread(io.BytesIO(delivered.response or b"")))
    assert dest.scu.associations == 1  # one association kept open for all three
    await dest.close()
    infos = [(await asyncio.to_thread(stored, orthanc, str(ds.SOPInstanceUID)))[0] for ds in sent]
    assert len({info["ParentSeries"] for info in infos}) == 1
    for previous, ds in zip(sent, sent[1:], strict=False):
        ref = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == previous.SOPInstanceUID
    assert all(str(ds.SOPInstanceUID).startswith("1.2.826.0.1.3680043.10.999.") for ds in sent)


async def test_statuses_not_released_and_shadow_results_are_not_sent() -> None:
    dest = destination(free_port(), release=["preliminary"])  # nothing listens: a send would fail
    corrected = await dest.send(message(record(status="corrected", revision=2)))
    assert (corrected.detail, corrected.response) == ("not sent: status corrected is not released", None)
    shadow = await dest.send(message(record(clinical=False)))
    assert shadow.detail == "not sent: shadow result"
    assert dest.scu.associations == 0
    await dest.close()


@pytest.mark.parametrize(
    "body, error",
    [
        (b"MSH|^~\\&|not json", "is not a JSON record"),
        (json.dumps({"type": "order", "topic": "order.accepted", "fields": {}}).encode(), "is not a result record"),
        (json.dumps({"type": "result", "fields": record(revision=0, sex=7)}).encode(),
         "result fields not valid: revision, sex"),
        (json.dumps({"type": "result", "fields": record(study_uid=None)}).encode(), "result has no valid study_uid"),
    ],
)  # fmt: skip
async def test_what_cannot_become_an_sr_is_permanent_and_names_no_values(body: bytes, error: str) -> None:
    dest = destination(free_port())
    with pytest.raises(PermanentError, match=re.escape(error)) as caught:
        await dest.send(Outbound("m9", "pacs-sr", body, "record"))
    assert "m9" in str(caught.value) and phi.leaks_in_bytes(str(caught.value).encode()) == []
    await dest.close()


def test_config_is_the_scu_config_plus_uid_root_and_release() -> None:
    config = DicomSrDestination.Config.model_validate({"host": "pacs", "port": 104, "called_ae": "PACS"})
    assert config.release == ["preliminary", "corrected", "withdrawn"] and config.uid_root is None
    assert (config.idle_s, config.on_failure, config.calling_ae) == (30, "dead", "RADBRIDGE")
    for bad in ({"uid_root": "1.2.03"}, {"uid_root": "1." + "2" * 40}, {"release": ["final"]}, {"release": []},
                {"protocol": "dicom"}):  # fmt: skip
        with pytest.raises(ValidationError):
            DicomSrDestination.Config.model_validate({"host": "pacs", "port": 104, "called_ae": "PACS", **bad})


def test_the_documented_channel_lints_clean(tmp_path: Path) -> None:
    from engine.runtime.lint import lint_all
    from tests.conftest import write_project

    text = (DOCS / "outputs.md").read_text()
    examples = [e for e in re.findall(r"<!-- example: channel -->\s*```yaml\n(.*?)```", text, re.DOTALL)
                if "dicom-sr" in e]  # fmt: skip
    assert len(examples) == 1
    root = write_project(tmp_path / "p")
    shutil.copytree(DOCS.parent / "mappings", root / "mappings", dirs_exist_ok=True)
    (root / "channels" / "pacs-sr.yaml").write_text(examples[0])
    assert [str(d) for d in lint_all([], root)] == []
