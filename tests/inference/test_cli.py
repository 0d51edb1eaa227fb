"""`radbridge models` and `radbridge jobs`: governance changes audited with who, why and evidence;
a fresh install lists its declared models; job retry and cancel through the store's guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.core.clock import utcnow
from engine.inference.jobs import JobRow, Jobs
from engine.runtime.context import open_context
from engine.security import keyring
from engine.store.tables import AuditRow
from tests.conftest import write_project

REPO = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "p")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    text = (REPO / "channels" / "inference.yaml").read_text()
    text = text.replace('    - name: head-ct-hyperdensity\n      version: "1.0.0"',
                        '    - name: head-ct-hyperdensity\n      version: "0.9.0"\n      kind: builtin\n'
                        '    - name: head-ct-hyperdensity\n      version: "1.0.0"')  # fmt: skip
    (root / "channels" / "inference.yaml").write_text(text)
    shutil.copy(REPO / "docs" / "reference-model.md", root / "reference-model.md")
    return root


def cli(root: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--root", str(root)])
    assert result.exit_code == 0, (args, result.output)
    return result.output


def audit(root: Path, action: str) -> list[dict]:
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            rows = conn.execute(select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.seq)).all()
        return [{"actor": r.actor, "purpose": r.purpose, "detail": ctx.audit.open_detail(r.id, r.detail)}
                for r in rows]  # fmt: skip
    finally:
        ctx.close()


def states(root: Path) -> dict[str, str]:
    return {line.split()[1]: line.split()[2] for line in cli(root, "models", "list").splitlines()}


def test_governance_lifecycle(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert states(root) == {"0.9.0": "shadow", "1.0.0": "active"}  # new versions start in shadow
    assert len(audit(root, "model.registered")) == 2
    # activation needs evidence
    result = CliRunner().invoke(app, ["models", "activate", "head-ct-hyperdensity", "0.9.0", "--reason", "try",
                                      "--root", str(root)])  # fmt: skip
    assert result.exit_code == 1 and "validation evidence" in result.output
    cli(root, "models", "activate", "head-ct-hyperdensity", "0.9.0", "--reason", "validated on site data",
        "--evidence", "https://qms.example.org/val/hch-0.9")
    assert states(root) == {"0.9.0": "active", "1.0.0": "retired"}  # one active version per model
    [activated] = audit(root, "model.activated")
    assert activated["actor"].startswith("user:") and activated["purpose"] == "other"
    assert activated["detail"]["purpose_text"] == "validated on site data"
    assert activated["detail"]["evidence"] == "https://qms.example.org/val/hch-0.9"
    assert activated["detail"]["from"] == "shadow" and activated["detail"]["to"] == "active"
    cli(root, "models", "rollback", "head-ct-hyperdensity", "--to", "1.0.0", "--reason", "false positives")
    assert states(root) == {"0.9.0": "shadow", "1.0.0": "active"}
    assert audit(root, "model.rolled_back")[0]["detail"]["reason"] == "false positives"
    cli(root, "models", "retire", "head-ct-hyperdensity", "0.9.0", "--reason", "superseded")
    assert states(root)["0.9.0"] == "retired"
    cli(root, "models", "recall", "head-ct-hyperdensity", "1.0.0", "--reason", "field safety notice FSN-7")
    assert states(root)["1.0.0"] == "recalled"  # no new jobs; its reports are withdrawn (tests/outputs)
    assert audit(root, "model.recalled")[0]["detail"]["reason"] == "field safety notice FSN-7"


def test_threshold_change_is_audited_with_before_and_after(tmp_path: Path) -> None:
    root = _project(tmp_path)
    cli(root, "models", "threshold", "head-ct-hyperdensity", "1.0.0", "1386000", "--critical", "0.7",
        "--report", "0.2", "--reason", "alert fatigue review")
    [changed] = audit(root, "model.threshold_changed")
    assert changed["detail"]["from"] is None and changed["detail"]["to"] == {"critical": 0.7, "report": 0.2}
    assert "thresholds=1386000" in cli(root, "models", "list")
    result = CliRunner().invoke(app, ["models", "threshold", "head-ct-hyperdensity", "1.0.0", "1386000",
                                      "--critical", "1.5", "--reason", "x", "--root", str(root)])  # fmt: skip
    assert result.exit_code == 1 and "between 0 and 1" in result.output
    result = CliRunner().invoke(app, ["models", "retire", "no-such-model", "1", "--reason", "x", "--root", str(root)])
    assert result.exit_code == 1 and "no model no-such-model version 1" in result.output


def test_jobs_retry_and_cancel(tmp_path: Path) -> None:
    root = _project(tmp_path)
    ctx = open_context(root)
    now = utcnow()
    try:
        job = JobRow(id="job-1", study_id="study-1", study_uid_idx=None, content_hash="c", model="head-ct-hyperdensity",
                     model_version="1.0.0", state="dead", priority=3, attempts=3, due_at=None, holder=None,
                     lease_until=None, channel="inference", trigger="neuro/head-ct", request_message="m",
                     result_message=None, clinical=None, input_digest=None, output_digest=None,
                     error="RetryableError: model down", revision=0, created_at=now, started_at=None,
                     finished_at=now, updated_at=now)  # fmt: skip
        ctx.writer.write(Jobs(ctx.db).new(job))
    finally:
        ctx.close()
    assert "job-1 dead head-ct-hyperdensity 1.0.0 study=study-1 attempts=3" in cli(root, "jobs", "list")
    result = CliRunner().invoke(app, ["jobs", "cancel", "job-1", "--reason", "x", "--root", str(root)])
    assert result.exit_code == 1 and "only queued or running" in result.output
    cli(root, "jobs", "retry", "job-1", "--reason", "model back up")
    assert "job-1 queued" in cli(root, "jobs", "list", "--state", "queued")
    cli(root, "jobs", "cancel", "job-1", "--reason", "study withdrawn")
    assert "job-1 cancelled" in cli(root, "jobs", "list")
    assert [a["detail"]["was"] for a in audit(root, "inference.retried")] == ["dead"]
    assert json.dumps(audit(root, "inference.cancelled")[0]["detail"]["reason"]) == '"study withdrawn"'
