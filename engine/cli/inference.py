"""`radbridge models`, `radbridge jobs` and `radbridge deid`: model governance, inference jobs and
folder de-identification. Output carries names, versions, ids, states and digests — never PHI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from engine.cli.common import ROOT, actor, app, context, fail, guard

models_app = typer.Typer(help="Model registry: versions, governance state, thresholds.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inference jobs: list, show, cancel, retry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
REASON = typer.Option(..., "--reason", help="Why: recorded with who in the audit entry.")


def _declared(ctx: Any) -> list[Any]:
    return [m for c in ctx.project.channels if c.source_kind == "inference" for m in c.source.models]


def _registry(ctx: Any) -> Any:
    from engine.inference.registry import Registry

    registry = Registry(ctx.db, ctx.writer, ctx.audit)
    registry.register(_declared(ctx), actor())  # a fresh install lists its models before the first run
    return registry


@models_app.command("list")
def models_list(root: Path = ROOT) -> None:
    """Every model version: state (shadow, active, retired), jobs running, evidence, last change and by whom."""
    ctx = context(root)
    try:
        rows = _registry(ctx).all()
    finally:
        ctx.close()
    for r in rows:
        tuned = f" thresholds={','.join(sorted(r.thresholds))}" if r.thresholds else ""
        typer.echo(f"{r.name} {r.version} {r.state} running={r.running} evidence={r.evidence or '-'} "
                   f"changed={r.changed_at:%Y-%m-%dT%H:%M:%SZ} by={r.changed_by}{tuned}")  # fmt: skip


def _set_state(name: str, version: str, state: str, reason: str, evidence: str | None, root: Path) -> None:
    ctx = context(root)
    try:
        guard(lambda: _registry(ctx).set_state(name, version, state, actor(), reason, evidence))  # type: ignore[arg-type]
    except ValueError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    typer.echo(f"{name} {version} {state}")


@models_app.command("activate")
def models_activate(
    name: str, version: str, reason: str = REASON, root: Path = ROOT,
    evidence: str | None = typer.Option(None, help="Link to this version's validation evidence (required once)."),
) -> None:  # fmt: skip
    """Release a version's results clinically; the model's other active version retires."""
    _set_state(name, version, "active", reason, evidence, root)


@models_app.command("shadow")
def models_shadow(name: str, version: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Keep running a version but only store its results (visible to admins, never clinical)."""
    _set_state(name, version, "shadow", reason, None, root)


@models_app.command("retire")
def models_retire(name: str, version: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Stop routing studies to a version."""
    _set_state(name, version, "retired", reason, None, root)


@models_app.command("recall")
def models_recall(name: str, version: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Stop routing to a version and withdraw every report it produced (ORU W, FHIR entered-in-error, SR)."""
    _set_state(name, version, "recalled", reason, None, root)


@models_app.command("rollback")
def models_rollback(
    name: str, to: str = typer.Option(..., "--to", help="Version to make active again."), reason: str = REASON,
    root: Path = ROOT,
) -> None:  # fmt: skip
    """Make an earlier version active again; the active one goes back to shadow."""
    ctx = context(root)
    try:
        guard(lambda: _registry(ctx).rollback(name, to, actor(), reason))
    except ValueError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    typer.echo(f"{name} {to} active")


@models_app.command("threshold")
def models_threshold(
    name: str, version: str, code: str,
    critical: float = typer.Option(..., help="Score from which the finding is critical (raises priority)."),
    report: float = typer.Option(0.0, help="Score below which the finding is left out of clinical output."),
    reason: str = REASON, root: Path = ROOT,
) -> None:  # fmt: skip
    """Tune one finding's alert thresholds for one version (audited with the values before and after)."""
    from pydantic import ValidationError

    from engine.inference.models import Threshold

    try:
        threshold = Threshold(critical=critical, report=report)
    except ValidationError:
        fail("thresholds are scores between 0 and 1")
    ctx = context(root)
    try:
        guard(lambda: _registry(ctx).set_threshold(name, version, code, threshold, actor(), reason))
    except ValueError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    typer.echo(f"{name} {version} {code} critical={critical} report={report}")


def _job_line(job: Any) -> str:
    took = ""
    if job.finished_at and job.started_at:
        took = f" took={(job.finished_at - job.started_at).total_seconds():.1f}s"
    return (f"{job.id} {job.state} {job.model} {job.model_version} study={job.study_id} attempts={job.attempts} "
            f"trigger={job.trigger}{took}" + (f" error={job.error}" if job.error else ""))  # fmt: skip


@jobs_app.command("list")
def jobs_list(
    root: Path = ROOT,
    state: str | None = typer.Option(None, help="Only this state: queued, running, completed, dead, cancelled."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
) -> None:
    """Inference jobs: id, state, model and version, study id, attempts, trigger, time taken, last error."""
    from engine.inference.jobs import Jobs

    ctx = context(root)
    try:
        jobs = Jobs(ctx.db).list(state=state, limit=limit)
    finally:
        ctx.close()
    for job in jobs:
        typer.echo(_job_line(job))


@jobs_app.command("show")
def jobs_show(job_id: str, root: Path = ROOT) -> None:
    """One job: states, times, input and output digests, result message; the findings by code and score."""
    import json

    from engine.inference.jobs import Jobs

    ctx = context(root)
    try:
        job = Jobs(ctx.db).get(job_id)
        if job is None:
            fail(f"no job {job_id}")
        findings: list[str] = []
        if job.result_message:
            record = json.loads(ctx.messages.read(job.result_message, "raw"))
            result = record["fields"]["result"]
            findings = [f"{f['system']}|{f['code']} score={f['score']:.3f}{' critical' if f['critical'] else ''}"
                        for f in result["findings"]]  # fmt: skip
            ctx.audit.record("inference.viewed", actor=actor(), record_ids=[job.id, job.result_message])
    finally:
        ctx.close()
    typer.echo(_job_line(job))
    for name in ("request_message", "result_message", "clinical", "input_digest", "output_digest", "created_at",
                 "started_at", "finished_at"):  # fmt: skip
        typer.echo(f"  {name}: {getattr(job, name)}")
    for line in findings:
        typer.echo(f"  finding: {line}")


def _change_job(job_id: str, root: Path, to: str, reason: str) -> None:
    from engine.core.clock import utcnow
    from engine.inference.jobs import Jobs, operator_change

    ctx = context(root)
    try:
        jobs = Jobs(ctx.db)
        job = jobs.get(job_id)
        if job is None:
            fail(f"no job {job_id}")
        item = guard(lambda: operator_change(jobs, job, to, now=utcnow(), event=ctx.audit.event, actor=actor(),
                                             reason=reason))  # fmt: skip
        guard(lambda: ctx.writer.write(item))
    finally:
        ctx.close()
    typer.echo(f"{job_id} {to}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Cancel a queued or running job (a running one's result is dropped)."""
    _change_job(job_id, root, "cancelled", reason)


@jobs_app.command("retry")
def jobs_retry(job_id: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Queue a dead or cancelled job again, with a fresh attempt count."""
    _change_job(job_id, root, "queued", reason)


@app.command("deid")
def deid(
    in_dir: Path = typer.Argument(..., help="Folder of DICOM files (searched recursively)."),
    out_dir: Path = typer.Argument(..., help="Where the de-identified files and deid-report.json go."),
    profile: Path | None = typer.Option(None, help="De-identification profile (YAML); the basic profile if omitted."),
    recipient: str = typer.Option("export", help="Who receives the files, for the accounting of disclosures."),
    reason: str = typer.Option("research export", help="Purpose, recorded in the audit entry."),
    root: Path = ROOT,
) -> None:
    """De-identify a folder (PS3.15 Annex E + options) for export; every action is in the report, and the
    disclosure is recorded per patient (blind index). Pseudonyms are keyed by the project's keyring."""
    from engine.core.clock import utcnow
    from engine.core.ids import new_id
    from engine.deid import deid_folder, load_profile
    from engine.store.tables import Disclosure
    from engine.store.writer import WriteItem

    chosen = guard(lambda: load_profile(profile))
    ctx = context(root)
    try:
        patients: dict[str, int] = {}

        def seen(patient_id: str) -> None:
            idx = ctx.index("mrn", patient_id)
            patients[idx] = patients.get(idx, 0) + 1

        key = ctx.keyring.derived_key(f"deid:{chosen.project}")
        report = guard(lambda: deid_folder(in_dir, out_dir, chosen, key, chosen.project, patient=seen))
        item = WriteItem()
        now = utcnow()
        for idx, files in patients.items():
            row = {"id": new_id(), "patient_idx": idx, "recipient": recipient[:200], "purpose": reason[:64],
                   "method": report.method, "study_id": None, "job_id": None, "items": files, "at": now}  # fmt: skip
            item.inserts.append((Disclosure.__table__, row))
        item.audit.append(ctx.audit.event(
            "deid.exported", actor=actor(), purpose=reason,
            detail={"files": len(report.files), "blocked": len(report.blocked), "skipped": len(report.skipped),
                    "patients": len(patients), "method": report.method, "recipient": recipient,
                    "project": chosen.project},
        ))  # fmt: skip
        ctx.writer.write(item)
    finally:
        ctx.close()
    typer.echo(f"{len(report.files)} file(s) de-identified ({report.method}), {len(report.blocked)} blocked, "
               f"{len(report.skipped)} skipped; report: {report.report_path}")  # fmt: skip
