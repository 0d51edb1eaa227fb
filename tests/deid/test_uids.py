"""UIDs: one pseudonym per original across a study, distinct per instance, consistent in references;
re-identification of results with the crosswalk."""

from __future__ import annotations

import json

from pydicom.dataset import Dataset

from engine.deid import reidentify_dataset, reidentify_uids
from engine.deid.pseudonyms import uid_pseudonym
from tests.deid.conftest import run
from tests.deid.data import KEY, PROJECT, instance, uid


def _study(count: int = 4) -> list[Dataset]:
    study, series = uid(), uid()
    instances = [instance(study_uid=study, series_uid=series, number=n) for n in range(1, count + 1)]
    for ds in instances[1:]:  # each later instance references the first one
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = instances[0].SOPInstanceUID
        ds.ReferencedImageSequence = [ref]
    return instances


def test_uids_are_consistent_across_a_study() -> None:
    originals = _study()
    outs = [run(ds) for ds in originals]
    studies = {o.dataset.StudyInstanceUID for o in outs}
    series = {o.dataset.SeriesInstanceUID for o in outs}
    sops = [o.dataset.SOPInstanceUID for o in outs]
    assert len(studies) == 1 and len(series) == 1
    assert studies.pop() == uid_pseudonym(KEY, PROJECT, originals[0].StudyInstanceUID)
    assert len(set(sops)) == len(sops)
    assert all(s.startswith("2.25.") and len(s) <= 64 for s in sops)
    for out in outs[1:]:
        assert out.dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID == sops[0]
    for original, out in zip(originals, outs, strict=True):
        assert out.uids[out.dataset.SOPInstanceUID] == original.SOPInstanceUID
        assert out.uids[out.dataset.StudyInstanceUID] == original.StudyInstanceUID
        assert original.SOPInstanceUID not in str(out.dataset)


def test_same_uid_differs_between_projects_and_keys() -> None:
    u = uid()
    assert uid_pseudonym(KEY, PROJECT, u) == uid_pseudonym(KEY, PROJECT, u)
    assert uid_pseudonym(KEY, "other", u) != uid_pseudonym(KEY, PROJECT, u)
    assert uid_pseudonym(b"another-key-of-32-bytes-00000000", PROJECT, u) != uid_pseudonym(KEY, PROJECT, u)


def test_reidentify_a_result_json() -> None:
    original = _study(2)
    outs = [run(ds) for ds in original]
    crosswalk = {k: v for o in outs for k, v in o.uids.items()}
    study, sop = outs[0].dataset.StudyInstanceUID, outs[1].dataset.SOPInstanceUID
    result = {
        "model": "chest-ai",
        "version": "1.2.0",
        "study_uid": study,
        "findings": [{"code": "RID5352", "score": 0.91, "instances": [sop, "2.25.1"], "series": [None, 3]}],
        "links": {study: f"https://viewer.invalid/studies/{study}/instances/{sop}"},
        "unchanged": f"{study}9",  # a longer UID that merely starts like the pseudonym
    }
    back = reidentify_uids(json.loads(json.dumps(result)), crosswalk)
    assert back["study_uid"] == original[0].StudyInstanceUID
    assert back["findings"][0]["instances"] == [original[1].SOPInstanceUID, "2.25.1"]
    assert back["findings"][0]["series"] == [None, 3] and back["findings"][0]["score"] == 0.91
    expected_link = (
        f"https://viewer.invalid/studies/{original[0].StudyInstanceUID}/instances/{original[1].SOPInstanceUID}"
    )
    assert back["links"] == {original[0].StudyInstanceUID: expected_link}
    assert back["unchanged"] == f"{study}9"
    assert result["study_uid"] == study  # the input is not modified


def test_reidentify_a_dataset() -> None:
    original = _study(2)
    outs = [run(ds) for ds in original]
    crosswalk = {k: v for o in outs for k, v in o.uids.items()}
    sr = Dataset()
    sr.StudyInstanceUID = outs[0].dataset.StudyInstanceUID
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = outs[1].dataset.SOPInstanceUID
    sr.CurrentRequestedProcedureEvidenceSequence = [Dataset()]
    sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence = [ref]
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    back = reidentify_dataset(sr, crosswalk)
    assert back.StudyInstanceUID == original[0].StudyInstanceUID
    inner = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence[0]
    assert inner.ReferencedSOPInstanceUID == original[1].SOPInstanceUID
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.StudyInstanceUID == outs[0].dataset.StudyInstanceUID  # a copy was changed
    whole = reidentify_dataset(outs[0].dataset, crosswalk)
    assert whole.SOPInstanceUID == original[0].SOPInstanceUID
    assert whole.file_meta.MediaStorageSOPInstanceUID == original[0].SOPInstanceUID
