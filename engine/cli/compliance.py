"""`radbridge compliance` (the evidence report, organisational attestations) and `radbridge disclosures`
(the accounting of disclosures for one patient). Output carries item ids, statuses, times and counts;
the disclosures listing never echoes the patient identifier it was asked for."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import typer

from engine.cli.common import ROOT, actor, app, context, fail, guard

compliance_app = typer.Typer(
    help="Compliance evidence: the HIPAA §164.312 report and organisational attestations.", no_args_is_help=True
)
app.add_typer(compliance_app, name="compliance")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
    with open(fd, "w", encoding="utf-8") as out:
        out.write(text)


@compliance_app.command("report")
def compliance_report(
    root: Path = ROOT,
    html: Path | None = typer.Option(None, "--html", help="Also write the report as an HTML page here."),
    pdf: Path | None = typer.Option(None, "--pdf", help="Also write it as PDF (needs headless Chromium)."),
    sbom: Path | None = typer.Option(None, "--sbom", help="Write the CycloneDX 1.5 SBOM (JSON) of this install here."),
    vuln_scan: bool = typer.Option(True, help="Run pip-audit, when installed, on the installed packages."),
    vuln_timeout: float = typer.Option(120.0, help="Seconds the vulnerability scan may take."),
) -> None:
    """Map each HIPAA §164.312 technical safeguard and checklist item to live evidence: pass, attention or
    fail, and why. The run is audited (compliance.reported)."""
    from engine.compliance import pdf as pdf_mod
    from engine.compliance.report import ACTION, audit_detail, build, render_html, render_text

    if pdf is not None:
        guard(pdf_mod.require_browser)  # before anything runs: a missing browser is a one-line error
    ctx = context(root)
    try:
        report = guard(lambda: build(ctx, sbom_path=sbom, vuln_scan=vuln_scan, vuln_timeout_s=vuln_timeout))
        page = render_html(report) if html or pdf else ""
        try:
            if html is not None:
                _write_private(html, page)
            if pdf is not None:
                guard(lambda: pdf_mod.html_to_pdf(page, pdf))
        except OSError as exc:
            fail(f"{exc.filename}: {exc.strerror}")
        outputs = {"html": str(html) if html else None, "pdf": str(pdf) if pdf else None,
                   "sbom": str(sbom) if sbom else None}  # fmt: skip
        ctx.audit.record(ACTION, actor=actor(), record_ids=[report.config_hash], detail=audit_detail(report, outputs))
    finally:
        ctx.close()
    typer.echo(render_text(report), nl=False)
    for kind, path in outputs.items():
        if path:
            typer.echo(f"{kind} written to {path}")


def _day(value: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--date must be a day as YYYY-MM-DD, got {value!r}")


@compliance_app.command("attest")
def compliance_attest(
    item: str = typer.Argument(
        ...,
        help="What is attested: baa, breach-notification, risk-analysis, staff-training, "
        "iso27001, dua, restore-test, key-escrow.",
    ),  # fmt: skip
    on: str = typer.Option(..., "--date", help="The day it happened (signed, carried out, tested): YYYY-MM-DD."),
    by: str = typer.Option(..., "--by", help="Who attests it: a name and role."),
    evidence: str = typer.Option(..., "--evidence", help="Where the evidence is: a document reference or a link."),
    root: Path = ROOT,
) -> None:
    """Record a dated organisational attestation (audited compliance.attested); the report counts it for a year
    (a restore test for 90 days)."""
    from engine.compliance.attestations import KINDS, record

    if item not in KINDS:
        fail(f"unknown item {item!r}; one of: {', '.join(KINDS)}")
    day = _day(on)
    ctx = context(root)
    try:
        row = guard(lambda: record(ctx, item, day, by, evidence, actor()))
    finally:
        ctx.close()
    typer.echo(f"attested {row.item} on {row.attested_on.isoformat()} by {row.attested_by} (id {row.id})")


@app.command("disclosures")
def disclosures(
    patient_id: str = typer.Argument(..., help="The patient identifier (MRN); matched by blind index, never shown."),
    reason: str = typer.Option(..., "--reason", help="Why the accounting is read: recorded in the audit entry."),
    root: Path = ROOT,
) -> None:
    """The accounting of disclosures for one patient: date, recipient, purpose, method, items (audited)."""
    from engine.compliance.disclosures import line, view

    ctx = context(root)
    try:
        entries = guard(lambda: view(ctx, patient_id, actor(), reason))
    finally:
        ctx.close()
    for entry in entries:
        typer.echo(line(entry))
    typer.echo(f"{len(entries)} disclosure(s) recorded for this patient")
