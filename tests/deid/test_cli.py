"""`radbridge deid IN OUT`: a folder de-identified for export with the project's keys; no PHI in the
output folder or on the terminal; the disclosure recorded per patient and audited."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.runtime.context import open_context
from engine.security import keyring
from engine.store.tables import AuditRow, Disclosure
from tests.conftest import write_project
from tests.deid.data import MRN, PHI, instance


def test_folder_export_records_disclosures_per_patient(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    src = tmp_path / "Testpatient_Alice"  # folder names may carry PHI too
    src.mkdir()
    for n in range(3):
        instance(number=n + 1).save_as(src / f"Testpatient_Alice_{n}.dcm", enforce_file_format=True)
    instance(mrn="MRN-TEST-0099", name="Testpatient^Bob").save_as(src / "bob.dcm", enforce_file_format=True)
    (src / "notes.txt").write_text("not DICOM")
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["deid", str(src), str(out), "--recipient", "university-study-17",
                                      "--root", str(root)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 file(s) de-identified (safe-harbor), 0 blocked, 1 skipped" in result.output
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in written if p.suffix == ".dcm"]) == 4 and (out / "deid-report.json").exists()
    for path in written:
        data = path.read_bytes()
        for text in PHI + ("Bob", "MRN-TEST-0099"):
            assert text.encode() not in data and text not in path.as_posix().removeprefix(str(tmp_path)), path
    for text in PHI:
        assert text not in result.output.replace(str(tmp_path), "")
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            rows = conn.execute(select(Disclosure.__table__)).all()
            [audit] = conn.execute(select(AuditRow).where(AuditRow.action == "deid.exported")).all()
        by_patient = {r.patient_idx: (r.items, r.recipient, r.method) for r in rows}
        assert by_patient == {
            ctx.index("mrn", MRN): (3, "university-study-17", "safe-harbor"),
            ctx.index("mrn", "MRN-TEST-0099"): (1, "university-study-17", "safe-harbor"),
        }
        assert audit.outcome == "success"
    finally:
        ctx.close()


def test_unreadable_profile_is_a_clear_error(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    profile = tmp_path / "profile.yaml"
    profile.write_text("retain_uidz: true\n")
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--profile", str(profile),
                                      "--root", str(root)])  # fmt: skip
    assert result.exit_code == 2
    assert f"{profile}:1:1: unknown key 'retain_uidz' (did you mean 'retain_uids'?)" in result.output
