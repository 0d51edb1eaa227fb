"""De-identification evidence: external models and de-identified destinations, their profiles and method."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime.context import open_context
from engine.security import keyring
from tests.compliance.conftest import cli, items, project_with

ENGINE = """\
node: {id: test-node}
keys: {source: file, file: keys/keyring.json, allow_dev_key: false}
listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18480}]
"""

INFERENCE = """\
name: inference
source:
  kind: inference
  models:
    - {name: head-ct, version: "1.0.0", kind: builtin}
    - name: cxr
      version: "2024.3"
      kind: oip
      url: https://models.example.test
      model_name: cxr_triage
      external: true
      labels: [{system: "http://snomed.info/sct", code: "36118008", display: "Pneumothorax"}]
  rule_sets:
    - name: all
      rules: [{name: every, models: [head-ct, cxr]}]
  deid: {project: cxr-vendor, retain_uids: %s}
destinations:
  - {name: events, kind: topic}
"""

HL7_OUT = """\
name: to-vendor
source: {kind: topic, topic: "order.*"}
destinations:
  - {name: vendor, kind: mllp, host: 127.0.0.1, port: 2590, deidentify: %s}
"""


def _root(tmp_path: Path, channels: dict[str, str]) -> Path:
    root = project_with(tmp_path / "p", ENGINE, channels)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


def _deid(root: Path):  # type: ignore[no-untyped-def]
    ctx = open_context(root)
    try:
        return items(ctx)["deidentification"]
    finally:
        ctx.close()


def test_safe_harbor_external_model_and_hl7_destination_pass(tmp_path: Path) -> None:
    root = _root(tmp_path, {"inference": INFERENCE % "false", "out": HL7_OUT % "basic"})
    item = _deid(root)
    assert item.status == "pass", item.why
    model = item.details["channel inference model cxr@2024.3"]
    assert model["https"] is True and model["host"] == "models.example.test"
    assert model["method"] == "safe-harbor" and model["table_edition"] and model["table_rows"] > 100
    assert item.details["channel to-vendor destination vendor"]["method"] == "safe-harbor"
    assert "channel inference model head-ct@1.0.0" not in item.details  # in-process: nothing leaves
    assert item.why == "2 external recipient(s), de-identified (safe-harbor) before anything leaves"


def test_limited_data_set_needs_a_data_use_agreement(tmp_path: Path) -> None:
    root = _root(tmp_path, {"inference": INFERENCE % "true"})
    item = _deid(root)
    assert item.status == "attention"
    assert item.why.startswith("limited data set sent to channel inference model cxr@2024.3: needs a data use")
    assert item.details["channel inference model cxr@2024.3"]["options"] == ["retain_uids"]
    cli("compliance", "attest", "dua", "--date", "2026-01-02", "--by", "Privacy officer", "--evidence",
        "DUA-cxr-vendor-2026", "--root", str(root))  # fmt: skip
    item = _deid(root)
    assert item.status == "pass" and item.why.endswith("data use agreement attested 2026-01-02")


@pytest.mark.parametrize("profile", ["profiles/missing.yaml", "profiles/bad.yaml"])
def test_a_profile_that_does_not_load_fails(tmp_path: Path, profile: str) -> None:
    root = _root(tmp_path, {"out": HL7_OUT % profile})
    (root / "profiles").mkdir()
    (root / "profiles" / "bad.yaml").write_text("retain_uids: maybe\n")
    item = _deid(root)
    assert (
        item.status == "fail"
        and "channel to-vendor destination vendor: de-identification profile does not load" in item.why
    )


def test_nothing_external_passes(tmp_path: Path) -> None:
    item = _deid(_root(tmp_path, {}))
    assert (item.status, item.why) == ("pass", "no external model or de-identified destination: nothing leaves "
                                                "the hospital")  # fmt: skip
