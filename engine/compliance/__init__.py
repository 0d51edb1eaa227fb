"""Compliance evidence: the HIPAA §164.312 technical safeguards and an organisational checklist, each
mapped to live evidence from this installation (configuration, keys, audit log, attestations), with a
status of pass / attention / fail and why. `radbridge compliance report` renders it; see docs/compliance.md.
"""

from engine.compliance.catalogue import ITEMS, collect
from engine.compliance.evidence import SAFEGUARDS, Evidence, Item, ItemFn, Status
from engine.compliance.report import Report, build, render_html, render_text

__all__ = [
    "ITEMS",
    "SAFEGUARDS",
    "Evidence",
    "Item",
    "ItemFn",
    "Report",
    "Status",
    "build",
    "collect",
    "render_html",
    "render_text",
]
