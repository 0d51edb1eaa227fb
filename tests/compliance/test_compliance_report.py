"""The report end to end: a fresh install is flagged, a configured one passes, HTML holds every item and no
PHI, and the run is audited."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from engine.compliance import SAFEGUARDS, build, render_html, render_text
from engine.runtime.context import open_context
from engine.store.tables import AuditRow
from tests import phi
from tests.compliance.conftest import cli, items


def test_fresh_dev_install_flags_dev_key_and_plaintext_loopback_listener(fresh_dev: Path) -> None:
    ctx = open_context(fresh_dev)
    try:
        found = items(ctx)
    finally:
        ctx.close()
    assert found["encryption-at-rest"].status == "fail"
    assert "development keyring" in found["encryption-at-rest"].why
    assert found["encryption-at-rest"].details["development_keyring"] is True
    listeners = found["transmission-listeners"]
    assert listeners.status == "attention"
    assert listeners.details["engine listener api (http)"]["status"] == "attention"
    assert listeners.details["engine listener api (http)"]["tls"] is False
    assert "plaintext on loopback: engine listener api (http)" in listeners.why
    assert found["transmission-clients"].status == "pass"  # nothing goes out
    assert found["audit-chain"].status == "attention"  # never signed
    for missing in ("backups", "restore-test", "retention", "key-escrow", "attestation-baa"):
        assert found[missing].status == "attention", missing
    assert found["vulnerability-scan"].status == "attention"


def test_fresh_file_keyring_is_not_failed_but_allow_dev_key_needs_attention(fresh_file: Path) -> None:
    ctx = open_context(fresh_file)
    try:
        found = items(ctx)
    finally:
        ctx.close()
    at_rest = found["encryption-at-rest"]
    assert at_rest.status == "attention" and "allow_dev_key" in at_rest.why
    assert at_rest.details["kek_source"] == "file" and at_rest.details["kek_active_version"] == 1
    assert found["transmission-listeners"].status == "attention"


def test_configured_install_passes_transmission_encryption_and_the_rest(configured: Path) -> None:
    ctx = open_context(configured)
    try:
        found = items(ctx)
        signer = ctx.keyring.signing_key_id
    finally:
        ctx.close()
    assert found["encryption-at-rest"].status == "pass", found["encryption-at-rest"].why
    assert found["transmission-listeners"].status == "pass", found["transmission-listeners"].why
    assert found["transmission-clients"].status == "pass", found["transmission-clients"].why
    api = found["transmission-listeners"].details["engine listener api (http)"]
    assert api["tls"] is True and api["min_version"] == "1.3" and api["why"] == "TLS 1.3 only"
    mllp = found["transmission-listeners"].details["channel ris-orders source (mllp)"]
    assert mllp["mutual"] is True and mllp["why"] == "TLS 1.2+, mutual"
    out = found["transmission-clients"].details["channel ris-orders destination ris-results (mllp)"]
    assert out["tls"] is True and out["mutual"] is True and out["host"] == "ris.example.test"
    # pip-audit is not run (vuln_scan=False): the only item left needing a person
    assert {k: v.status for k, v in found.items() if v.status != "pass"} == {"vulnerability-scan": "attention"}
    assert found["backups"].details["latest"]["store"] in ("sqlite", "postgresql")
    chain = found["audit-chain"].details
    assert chain["verified"] is True and chain["signed_checkpoints"] == 1 and chain["last_checkpoint_signer"] == signer
    assert f"signed by key {signer}" in found["audit-chain"].why


def test_html_has_every_item_and_header_and_no_phi(configured: Path, tmp_path: Path) -> None:
    ctx = open_context(configured)
    try:
        message_id, item = ctx.messages.receive(
            "ris-orders", "hl7v2 ORM^O01", phi.ORM.encode(),
            indexes={"accession": ctx.index("accession", phi.ACCESSION), "mrn": ctx.index("mrn", phi.MRN)},
        )  # fmt: skip
        item.audit.append(ctx.audit.event("message.received", actor="peer:127.0.0.1", record_ids=[message_id],
                                          detail={"note": phi.NAME_FAMILY}))  # fmt: skip
        ctx.writer.write(item)
        report = build(ctx, vuln_scan=False)
    finally:
        ctx.close()
    page = render_html(report)
    text = render_text(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for item in report.items:
        assert f'id="{item.id}"' in page and item.id in text
    for heading in SAFEGUARDS.values():
        assert heading.replace("&", "&amp;") in page and heading in text
    assert report.engine_version in page and report.config_hash in page and report.node in page
    assert 'data-fail="0"' in page
    assert phi.leaks_in_bytes(page.encode()) == [] and phi.leaks_in_bytes(text.encode()) == []


def test_html_escapes_attested_text(fresh_file: Path) -> None:
    cli("compliance", "attest", "baa", "--date", "2026-01-05", "--by", "<script>alert(1)</script>",
        "--evidence", 'contract "A&B" <b>', "--root", str(fresh_file))  # fmt: skip
    ctx = open_context(fresh_file)
    try:
        page = render_html(build(ctx, vuln_scan=False))
    finally:
        ctx.close()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "contract &quot;A&amp;B&quot; &lt;b&gt;" in page


def test_cli_report_writes_html_and_sbom_and_is_audited(fresh_dev: Path, tmp_path: Path) -> None:
    html, sbom = tmp_path / "report.html", tmp_path / "sbom.json"
    result = cli("compliance", "report", "--root", str(fresh_dev), "--html", str(html), "--sbom", str(sbom),
                 "--no-vuln-scan")  # fmt: skip
    assert "FAIL      encryption-at-rest:" in result.output
    assert "ATTENTION transmission-listeners:" in result.output
    assert f"html written to {html}" in result.output and f"sbom written to {sbom}" in result.output
    assert html.stat().st_mode & 0o777 == 0o600 and sbom.stat().st_mode & 0o777 == 0o600
    assert 'id="encryption-at-rest"' in html.read_text()
    assert json.loads(sbom.read_text())["bomFormat"] == "CycloneDX"
    ctx = open_context(fresh_dev)
    try:
        table = AuditRow.__table__
        with ctx.db.connect() as conn:
            rows = conn.execute(select(table).where(table.c.action == "compliance.reported")).all()
        assert len(rows) == 1
        detail = ctx.audit.open_detail(rows[0].id, rows[0].detail)
    finally:
        ctx.close()
    assert detail["fail"] == 1 and detail["not_passing"]["encryption-at-rest"] == "fail"
    assert detail["outputs"] == {"html": str(html), "sbom": str(sbom)}
    assert json.loads(rows[0].record_ids) == [detail["config"]]


def test_a_broken_item_function_is_a_failed_item_not_a_crash(fresh_file: Path) -> None:
    def exploding(ev):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"secret {phi.MRN}")

    ctx = open_context(fresh_file)
    try:
        report = build(ctx, vuln_scan=False, items=[exploding])
    finally:
        ctx.close()
    [item] = report.items
    assert (item.id, item.status, item.why) == ("exploding", "fail", "could not be evaluated (RuntimeError)")
