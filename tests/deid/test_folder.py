"""`deid_folder` end to end on a temporary tree, and `load_profile`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pydicom
import pytest

from engine.core.errors import ConfigError, PermanentError
from engine.deid import DeidProfile, deid_folder, load_profile
from engine.deid.pseudonyms import patient_pseudonym, uid_pseudonym
from tests.deid.data import KEY, MRN, PHI, image, instance, uid
from tests.dicomdata import part10_bytes
from tests.phi import leaks_in_bytes

PROJECT = "proj-folder"


def _tree(root: Path) -> tuple[Path, list[str], str]:
    """Three CT instances of one study, one US image, one text file; names carry the fake PHI."""
    folder = root / "Testpatient_Alice" / MRN
    folder.mkdir(parents=True)
    study = uid()
    sops = []
    for n in range(1, 4):
        ds = instance(study_uid=study, number=n)
        ds.private_block(0x0029, "ACME PRIVATE", create=True).add_new(0x01, "LO", MRN)
        ds.InstitutionName = "Fake General Hospital"
        (folder / f"Testpatient_Alice_{n}.dcm").write_bytes(part10_bytes(ds))
        sops.append(str(ds.SOPInstanceUID))
    (folder / "Testpatient_Alice_us.dcm").write_bytes(part10_bytes(image("US")))
    (root / "Testpatient_Alice" / "notes.txt").write_text(f"patient {MRN}\n")
    return folder, sops, study


def _scan(out: Path, strings: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in out.rglob("*"):
        hits = leaks_in_bytes(str(path.relative_to(out)).encode(), strings)
        if path.is_file():
            hits += leaks_in_bytes(path.read_bytes(), strings)
        if hits:
            found[str(path.relative_to(out))] = hits
    return found


def test_deid_folder_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _, sops, study = _tree(src)
    report = deid_folder(src, out, DeidProfile(), KEY, PROJECT, progress=True)

    assert report.written == 3 and len(report.blocked) == 1 and len(report.skipped) == 1
    assert _scan(out, (*PHI, "Fake General Hospital", study, *sops)) == {}
    assert leaks_in_bytes(capsys.readouterr().out.encode(), PHI) == []

    written = sorted(p for p in out.rglob("*.dcm"))
    assert sorted(p.name for p in written) == sorted(f"{uid_pseudonym(KEY, PROJECT, s)}.dcm" for s in sops)
    assert {p.parent.relative_to(out).parts[0][:2] for p in written} == {"d-"}
    assert len(written[0].relative_to(out).parts) == 3  # two folder levels mirrored, renamed
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == patient_pseudonym(KEY, PROJECT, MRN)
        assert ds.StudyInstanceUID == uid_pseudonym(KEY, PROJECT, study)
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(e.tag.is_private for e in ds)

    doc = json.loads((out / "deid-report.json").read_text())
    assert doc["method"] == "safe-harbor" and doc["table_edition"] == "2026c" and doc["project"] == PROJECT
    assert doc["totals"]["written"] == 3 and doc["totals"]["blocked"] == 1 and doc["totals"]["skipped"] == 1
    assert doc["totals"]["actions"]["U"] == 3 * 4  # SOP, study, series, media storage SOP instance UIDs
    assert doc["totals"]["actions"]["X"] == 3 * 4  # private element and its creator, request sequence, description
    first = doc["files"][0]
    assert first["method"] == "safe-harbor" and ["PatientName", "D"] in first["actions"]
    assert ["InstitutionName", "Z"] in first["actions"]
    blocked = doc["blocked"][0]
    assert set(blocked) == {"index", "path_hash", "reason"} and "modality US" in blocked["reason"]
    assert doc["skipped"][0]["note"] == "not a DICOM Part 10 file"

    assert report.uids[uid_pseudonym(KEY, PROJECT, study)] == study  # the crosswalk goes back to the caller only
    assert "crosswalk" not in doc and "uids" not in doc


def test_limited_data_set_is_reported(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _tree(src)
    report = deid_folder(src, out, DeidProfile(retain_longitudinal_temporal=True), KEY, PROJECT, progress=False)
    assert report.method == "limited-data-set"
    assert json.loads((out / "deid-report.json").read_text())["method"] == "limited-data-set"


def test_output_inside_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        deid_folder(tmp_path, tmp_path / "out", DeidProfile(), KEY, PROJECT, progress=False)


def test_load_profile(tmp_path: Path) -> None:
    assert load_profile(None) == DeidProfile()
    path = tmp_path / "profile.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            project: study-42
            table_edition: "2024b"
            retain_longitudinal_temporal: true
            clean_descriptors: true
            descriptor_allow_list: [CT, HEAD]
            retain_safe_private: true
            safe_private:
              - {creator: SIEMENS CT VA0 COAD, tag: "(0019,xx23)"}
            burned_in:
              mode: clean
              rules:
                - {modality: US, manufacturer: FAKEVENDOR, regions: [[0, 0, 640, 40]]}
            hl7: {keep_provider_names: true}
            """
        )
    )
    profile = load_profile(path)
    assert profile.project == "study-42" and profile.table_edition == "2024b"
    assert profile.safe_private[0].group == 0x0019 and profile.safe_private[0].offset == 0x23
    assert profile.burned_in.rules[0].regions == [(0, 0, 640, 40)]
    assert profile.hl7.keep_provider_names and not profile.hl7.keep_free_text
    path.write_text("retain_uid: true\n")
    unknown = r"profile.yaml:1:1: unknown key 'retain_uid' \(did you mean 'retain_uids'\?\)"
    with pytest.raises(ConfigError, match=unknown):
        load_profile(path)
    path.write_text("safe_private: [{creator: X, tag: '(0019,xx23)'}]\n")
    with pytest.raises(ConfigError, match=r"profile.yaml:1:1: .*retain_safe_private is off"):
        load_profile(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError):
        load_profile(path)
    path.write_text("")
    assert load_profile(path) == DeidProfile()
