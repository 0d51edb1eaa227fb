"""IAN and MPPS through a pynetdicom SCU on 127.0.0.1: Notifications out, MPPS steps kept in the
channel's sealed state across a restart of the source, statuses for every bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import InstanceAvailabilityNotification, ModalityPerformedProcedureStep

from engine.connectors.dicom.notify import state_name
from engine.core.component import Outcome
from engine.dicom import Notification
from engine.runtime.context import open_context
from engine.security import keyring
from engine.store.state import ChannelState
from tests import phi
from tests.conftest import write_project
from tests.connectors.fakes import MemoryState, Recorder
from tests.connectors.test_dicom_source import context, no_phi_in_logs, running

__all__ = ["no_phi_in_logs"]  # the autouse fixture: every log line of these tests is free of fake PHI
MPPS = ModalityPerformedProcedureStep
IAN = InstanceAvailabilityNotification


def scu(port: int, sop_class: str, work: Callable[[Any], Any]) -> Any:
    """Associate (blocking: run it in a thread), do `work(assoc)`, release."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return work(assoc)
    finally:
        assoc.release()


async def call(source: Any, sop_class: str, work: Callable[[Any], Any]) -> Any:
    return await asyncio.to_thread(scu, source.port, sop_class, work)


def ian(study_uid: str, instances: list[str]) -> Dataset:
    ds = Dataset()
    request = Dataset()
    request.AccessionNumber = phi.ACCESSION
    request.StudyInstanceUID = study_uid
    ds.ReferencedRequestSequence = [request]
    ds.StudyInstanceUID = study_uid
    ds.ReferencedPerformedProcedureStepSequence = []
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    refs = []
    for uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = uid
        ref.InstanceAvailability = "ONLINE"
        ref.RetrieveAETitle = "PACS"
        refs.append(ref)
    series.ReferencedSOPSequence = refs
    ds.ReferencedSeriesSequence = [series]
    return ds


def mpps_create(study_uid: str, status: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    ds.PatientName = f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"
    ds.PatientID = phi.MRN
    ds.PatientBirthDate = phi.DOB
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.AccessionNumber = phi.ACCESSION
    step.RequestedProcedureID = "RP1"
    ds.ScheduledStepAttributesSequence = [step]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "CT"
    return ds


def mpps_set(status: str, instances: list[str] = ()) -> Dataset:  # type: ignore[assignment]
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if instances:
        series = Dataset()
        series.SeriesInstanceUID = generate_uid()
        images = []
        for uid in instances:
            image = Dataset()
            image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            image.ReferencedSOPInstanceUID = uid
            images.append(image)
        series.ReferencedImageSequence = images
        ds.PerformedSeriesSequence = [series]
    return ds


def status(result: Any) -> int:
    return int(result[0].Status) if result[0] else -1


# --- IAN ----------------------------------------------------------------------------------------


async def test_ian_becomes_an_instances_available_notification() -> None:
    rec = Recorder()
    study, instances, ian_uid = generate_uid(), [generate_uid(), generate_uid()], generate_uid()
    async with running(rec, services=["ian"]) as source:
        result = await call(source, IAN, lambda a: a.send_n_create(ian(study, instances), IAN, ian_uid))
    assert status(result) == 0x0000
    (inbound,) = rec.inbounds
    expected = Notification("instances.available", study, "ian", accessions=(phi.ACCESSION,),
                            sop_instance_uids=tuple(instances))  # fmt: skip
    assert inbound.decoded == expected and Notification.from_json(inbound.raw) == expected
    assert (inbound.kind, inbound.type, inbound.dedup) == ("notification", "instances.available", ian_uid)
    assert inbound.peer.startswith("127.0.0.1:")


async def test_ian_without_an_instance_uid_gets_one() -> None:
    rec = Recorder()
    async with running(rec, services=["ian"]) as source:
        result = await call(source, IAN, lambda a: a.send_n_create(ian(generate_uid(), []), IAN, None))
    assert status(result) == 0x0000
    assert rec.inbounds[0].dedup and rec.inbounds[0].dedup.startswith("1.2.826.0.1.3680043")


@pytest.mark.parametrize(
    "outcome, expected", [("duplicate", 0x0000), ("invalid", 0x0110), ("refused", 0x0124), ("unavailable", 0x0213)]
)
async def test_ian_outcomes_map_to_statuses(outcome: str, expected: int) -> None:
    rec = Recorder(Outcome(outcome))  # type: ignore[arg-type]
    async with running(rec, services=["ian"]) as source:
        result = await call(source, IAN, lambda a: a.send_n_create(ian(generate_uid(), []), IAN, generate_uid()))
    assert status(result) == expected


async def test_ian_without_study_uid_is_refused_and_not_emitted() -> None:
    rec = Recorder()
    bad = ian(generate_uid(), [])
    del bad.StudyInstanceUID
    async with running(rec, services=["ian"]) as source:
        result = await call(source, IAN, lambda a: a.send_n_create(bad, IAN, generate_uid()))
    assert status(result) == 0x0120 and rec.inbounds == []


async def test_ian_sink_timeout_is_a_resource_limitation() -> None:
    rec = Recorder()
    rec.delay = 2.0
    async with running(rec, services=["ian"], sink_timeout_s=0.3) as source:
        result = await call(source, IAN, lambda a: a.send_n_create(ian(generate_uid(), []), IAN, generate_uid()))
    assert status(result) == 0x0213


# --- MPPS ---------------------------------------------------------------------------------------


async def test_mpps_completed_survives_a_restart_and_emits_procedure_completed() -> None:
    rec, state = Recorder(), MemoryState()
    ctx = context(rec, state=state)
    study, uid, images = generate_uid(), generate_uid(), [generate_uid(), generate_uid()]
    async with running(rec, ctx=ctx, services=["mpps"]) as source:
        created = await call(source, MPPS, lambda a: a.send_n_create(mpps_create(study), MPPS, uid))
        progress = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("IN PROGRESS", images[:1]), MPPS, uid))
    assert (status(created), status(progress)) == (0x0000, 0x0000)
    assert rec.inbounds == []
    assert list(state.values) == [state_name(uid)] and uid.encode() not in state_name(uid).encode()
    async with running(rec, ctx=ctx, services=["mpps"]) as source:  # a new source: only the state is left
        done = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("COMPLETED", images[1:]), MPPS, uid))
        again = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("COMPLETED"), MPPS, uid))
    assert status(done) == 0x0000 and status(again) == 0x0110  # no update after COMPLETED
    (inbound,) = rec.inbounds
    assert inbound.decoded == Notification("procedure.completed", study, "mpps", accessions=(phi.ACCESSION,),
                                           patient_id=phi.MRN, sop_instance_uids=tuple(images))  # fmt: skip
    assert (inbound.kind, inbound.type, inbound.dedup) == ("notification", "procedure.completed", f"{uid}#completed")
    assert json.loads(state.values[state_name(uid)])["status"] == "COMPLETED"


async def test_mpps_discontinued_is_audited_only() -> None:
    rec, state = Recorder(), MemoryState()
    uid = generate_uid()
    async with running(rec, ctx=context(rec, state=state), services=["mpps"]) as source:
        await call(source, MPPS, lambda a: a.send_n_create(mpps_create(generate_uid()), MPPS, uid))
        result = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("DISCONTINUED"), MPPS, uid))
        fields = await rec.wait_audit("procedure.discontinued")
    assert status(result) == 0x0000 and rec.inbounds == []
    assert fields["actor"] == "ae:CT01" and fields["outcome"] == "success"
    assert uid not in json.dumps(fields)


async def test_mpps_statuses_for_bad_input() -> None:
    rec, state = Recorder(), MemoryState()
    uid = generate_uid()
    no_study = mpps_create(generate_uid())
    del no_study.ScheduledStepAttributesSequence[0].StudyInstanceUID
    async with running(rec, ctx=context(rec, state=state), services=["mpps"]) as source:

        def run(work: Callable[[Any], Any]) -> Any:
            return call(source, MPPS, work)

        unknown = await run(lambda a: a.send_n_set(mpps_set("COMPLETED"), MPPS, generate_uid()))
        not_in_progress = await run(lambda a: a.send_n_create(mpps_create(generate_uid(), "COMPLETED"), MPPS, uid))
        missing = await run(lambda a: a.send_n_create(no_study, MPPS, uid))
        first = await run(lambda a: a.send_n_create(mpps_create(generate_uid()), MPPS, uid))
        twice = await run(lambda a: a.send_n_create(mpps_create(generate_uid()), MPPS, uid))
        odd = await run(lambda a: a.send_n_set(mpps_set("PAUSED"), MPPS, uid))
    assert status(unknown) == 0x0112
    assert (status(not_in_progress), status(missing), status(first), status(twice)) == (0x0106, 0x0120, 0, 0x0111)
    assert status(odd) == 0x0106
    assert rec.inbounds == []


async def test_mpps_completed_not_stored_stays_open_for_the_retry() -> None:
    rec, state = Recorder(Outcome("unavailable")), MemoryState()
    uid = generate_uid()
    async with running(rec, ctx=context(rec, state=state), services=["mpps"]) as source:
        await call(source, MPPS, lambda a: a.send_n_create(mpps_create(generate_uid()), MPPS, uid))
        failed = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("COMPLETED"), MPPS, uid))
        rec.outcome = Outcome("accepted", "m1")
        retried = await call(source, MPPS, lambda a: a.send_n_set(mpps_set("COMPLETED"), MPPS, uid))
    assert (status(failed), status(retried)) == (0x0213, 0x0000)
    assert [i.type for i in rec.inbounds] == ["procedure.completed", "procedure.completed"]


async def test_mpps_state_store_failure_is_a_resource_limitation() -> None:
    class Broken(MemoryState):
        async def put(self, name: str, value: bytes) -> None:
            raise OSError("disk full")

    rec = Recorder()
    async with running(rec, ctx=context(rec, state=Broken()), services=["mpps"]) as source:
        create = mpps_create(generate_uid())
        result = await call(source, MPPS, lambda a: a.send_n_create(create, MPPS, generate_uid()))
    assert status(result) == 0x0213


async def test_mpps_state_in_the_real_sealed_store(tmp_path: Path) -> None:
    root = write_project(tmp_path / "project")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    app = open_context(root)
    try:
        state = ChannelState(app.db, app.writer, app.vault, "pacs")
        rec = Recorder()
        uid, study = generate_uid(), generate_uid()
        steps = [lambda a: a.send_n_create(mpps_create(study), MPPS, uid),
                 lambda a: a.send_n_set(mpps_set("COMPLETED"), MPPS, uid)]  # fmt: skip
        for work in steps:  # a fresh source each time: only the store remembers
            async with running(rec, ctx=context(rec, state=state), services=["mpps"]) as source:
                assert status(await call(source, MPPS, work)) == 0x0000
        assert rec.inbounds[0].decoded.study_uid == study
        assert phi.leaks_in_tree(root) == {}  # the step's patient id and accession are sealed
    finally:
        app.close()
