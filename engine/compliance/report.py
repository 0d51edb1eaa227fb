"""The compliance report: the evidence items under a header (engine version, node, configuration hash,
time, totals), rendered as text for the terminal and as a self-contained HTML page (printed to PDF by
engine.compliance.pdf).

HTML is built with the standard library: every value goes through `html.escape` in `_e`, the one way
text reaches the page. (Jinja2 is not installed in the engine's environment, and a page this small does
not need a template engine.)
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import __version__
from engine.compliance import sbom
from engine.compliance.catalogue import collect
from engine.compliance.evidence import SAFEGUARDS, STATUSES, Evidence, Item, ItemFn
from engine.core.clock import iso, utcnow

TITLE = "radbridge compliance report: HIPAA Security Rule technical safeguards (45 CFR §164.312)"
ACTION = "compliance.reported"


@dataclass(frozen=True)
class Report:
    engine_version: str
    node: str
    config_hash: str
    store: str
    generated_at: str
    items: list[Item]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for i in self.items if i.status == s) for s in STATUSES}

    def sections(self) -> list[tuple[str, list[Item]]]:
        """(safeguard heading, its items) in safeguard order; a safeguard without items is listed empty."""
        return [(heading, [i for i in self.items if i.safeguard == key]) for key, heading in SAFEGUARDS.items()]

    def summary(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.counts().items())


def build(
    ctx: Any,
    *,
    now: datetime | None = None,
    sbom_path: Path | None = None,
    vuln_scan: bool = True,
    vuln_timeout_s: float = 120.0,
    items: list[ItemFn] | None = None,
) -> Report:
    """Gather every item from the live engine `ctx` (an engine.runtime Context); with `sbom_path`, write
    the CycloneDX SBOM there first."""
    now = now or utcnow()
    if sbom_path is not None:
        sbom.write(sbom.build(now), sbom_path)
    ev = Evidence(ctx, now=now, sbom_path=sbom_path, vuln_scan=vuln_scan, vuln_timeout_s=vuln_timeout_s)
    return Report(__version__, ctx.node, ctx.project.hash, ctx.db.dialect.name, iso(now), collect(ev, items))


# -- text ------------------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    lines = [
        TITLE,
        f"engine {report.engine_version} | node {report.node} | config {report.config_hash[:16]} | "
        f"store {report.store} | generated {report.generated_at}",
        report.summary(),
    ]
    for heading, items in report.sections():
        lines += ["", heading]
        if not items:
            lines.append("  (no evidence item)")
        for item in items:
            lines.append(f"  {item.status.upper():<9} {item.id}: {item.why}")
    return "\n".join(lines) + "\n"


# -- HTML ------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value(value: Any) -> str:
    if value is None:
        return "<span class=none>none</span>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if not value:
            return "<span class=none>none</span>"
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f"<table class=kv>{rows}</table>"
    if isinstance(value, list | tuple):
        if not value:
            return "<span class=none>none</span>"
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return _e(", ".join(str(v) for v in value))
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return _e(value)


_CSS = """
body { font: 13px/1.45 system-ui, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.meta th { text-align: left; padding-right: 1em; font-weight: 600; }
.item { border: 1px solid #ddd; border-radius: 4px; margin: .6em 0; padding: .5em .8em; page-break-inside: avoid; }
.status { display: inline-block; min-width: 6em; font-weight: 700; text-transform: uppercase; }
.pass .status { color: #176b2c; } .attention .status { color: #8a5a00; } .fail .status { color: #b00020; }
.cite { color: #555; } .why { margin: .3em 0; } .none { color: #888; }
details summary { cursor: pointer; color: #333; }
table.kv { border-collapse: collapse; margin: .2em 0; } table.kv th, table.kv td { border: 1px solid #e3e3e3;
  padding: 2px 6px; text-align: left; vertical-align: top; } table.kv th { font-weight: 500; background: #fafafa; }
"""


def _item_html(item: Item) -> str:
    details = f"<details open><summary>details</summary>{_value(item.details)}</details>" if item.details else ""
    return (
        f'<div class="item {_e(item.status)}" id="{_e(item.id)}">'
        f"<span class=status>{_e(item.status)}</span> <strong>{_e(item.title)}</strong> "
        f"<code>{_e(item.id)}</code> <span class=cite>{_e(item.cite)}</span>"
        f"<p class=why>{_e(item.why)}</p>{details}</div>"
    )


def render_html(report: Report) -> str:
    counts = report.counts()
    meta = {
        "engine version": report.engine_version,
        "node": report.node,
        "configuration hash": report.config_hash,
        "store": report.store,
        "generated": report.generated_at,
        "summary": report.summary(),
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(TITLE)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(TITLE)}</h1>",
        "<table class=meta>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta.items()),
        "</table>",
        f'<p id=summary data-pass="{counts["pass"]}" data-attention="{counts["attention"]}" '
        f'data-fail="{counts["fail"]}">Each item is evidence gathered from this installation when the report was '
        "generated; <em>attention</em> needs a person to look, <em>fail</em> needs a fix.</p>",
    ]
    for heading, items in report.sections():
        parts.append(f"<h2>{_e(heading)}</h2>")
        parts += [_item_html(i) for i in items] or ["<p class=none>No evidence item for this safeguard yet.</p>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def audit_detail(report: Report, outputs: dict[str, str | None]) -> dict[str, Any]:
    """What the `compliance.reported` audit entry records: totals, the failing items, where it was written."""
    detail: dict[str, Any] = dict(report.counts())
    detail["config"] = report.config_hash
    detail["not_passing"] = {i.id: i.status for i in report.items if i.status != "pass"}
    detail["outputs"] = {k: v for k, v in outputs.items() if v}
    return detail
