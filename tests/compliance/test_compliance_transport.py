"""Transmission security and peer authentication, judged per socket from the validated configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compliance.transport import endpoints, is_loopback
from engine.config import load_project
from engine.runtime.context import open_context
from engine.security import keyring
from tests.compliance.conftest import items, project_with

ENGINE = """\
node: {id: test-node}
keys: {source: file, file: keys/keyring.json, allow_dev_key: false}
listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18480}]
audit:
  forward: {host: siem.example.test, port: 6514, ca: certs/ca.crt}
"""

CHANNELS = {
    "open-mllp": """\
        name: open-mllp
        source: {kind: mllp, host: 0.0.0.0, port: 12575}
        destinations:
          - {name: vendor, kind: mllp, host: 10.1.2.3, port: 2590}
          - {name: local, kind: mllp, host: 127.0.0.1, port: 2591}
        """,
    "dicom-local": """\
        name: dicom-local
        source: {kind: dicom, host: 127.0.0.1, port: 11112}
        """,
    "hook": """\
        name: hook
        source:
          kind: webhook
          host: 0.0.0.0
          port: 18443
          tls: {cert: certs/server.crt, key: certs/server.key}
          auth: {bearer: "${HOOK_TOKEN}"}
        destinations:
          - name: ehr
            kind: fhir
            base_url: https://fhir.example.test/r4
            patient_identifier_system: https://genhosp.example/fhir/mrn
            accession_identifier_system: https://genhosp.example/fhir/accession
            auth: {oauth2: {token_url: "https://login.example.test/token", client_id: rb, client_secret: "${S}"}}
        """,
    "old": """\
        name: old
        enabled: false
        source: {kind: mllp, host: 0.0.0.0, port: 12576}
        """,
}


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOOK_TOKEN", "a-long-enough-test-token")
    monkeypatch.setenv("S", "client-secret")
    root = project_with(tmp_path / "p", ENGINE, CHANNELS)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


def test_every_socket_is_found_and_judged(mixed: Path) -> None:
    found, skipped = endpoints(load_project(mixed))
    judged = {e.where: (e.role, e.host, e.port, *e.judge()) for e in found}
    assert judged == {
        "engine listener api (http)": ("listener", "127.0.0.1", 18480, "attention",
                                       "plaintext on the loopback interface"),
        "channel dicom-local source (dicom)": ("listener", "127.0.0.1", 11112, "attention",
                                               "plaintext on the loopback interface"),
        "channel hook source (webhook)": ("listener", "0.0.0.0", 18443, "pass", "TLS 1.2+"),
        "channel hook destination ehr (fhir)": ("client", "fhir.example.test", 443, "pass", "TLS 1.2+"),
        "channel hook destination ehr (fhir) token endpoint": ("client", "login.example.test", 443, "pass",
                                                                "TLS 1.2+"),
        "channel open-mllp source (mllp)": ("listener", "0.0.0.0", 12575, "fail", "plaintext over the network"),
        "channel open-mllp destination vendor (mllp)": ("client", "10.1.2.3", 2590, "fail",
                                                        "plaintext over the network"),
        "channel open-mllp destination local (mllp)": ("client", "127.0.0.1", 2591, "attention",
                                                       "plaintext on the loopback interface"),
        "audit forwarder (syslog)": ("client", "siem.example.test", 6514, "pass", "TLS 1.2+"),
    }  # fmt: skip
    assert skipped == ["old"]


def test_items_take_the_worst_and_name_the_culprits(mixed: Path) -> None:
    ctx = open_context(mixed)
    try:
        found = items(ctx)
    finally:
        ctx.close()
    listeners, clients, peers = found["transmission-listeners"], found["transmission-clients"], found[
        "peer-authentication"]  # fmt: skip
    assert listeners.status == "fail"
    assert listeners.why == ("4 listener(s): 1 over TLS (0 mutual); plaintext over the network: channel open-mllp "
                             "source (mllp); plaintext on loopback: engine listener api (http), channel dicom-local "
                             "source (dicom)")  # fmt: skip
    assert listeners.details["disabled channels (not started)"] == ["old"]
    assert clients.status == "fail" and "channel open-mllp destination vendor (mllp)" in clients.why
    # the webhook names its senders by a credential; the open MLLP port takes anyone from the network
    assert peers.status == "attention" and peers.why.startswith("accepts any peer from the network: channel open-mllp")
    assert peers.details["channel hook source (webhook)"]["peers"] == "credential"
    assert peers.details["channel dicom-local source (dicom)"]["peers"] == "anyone"  # loopback: not flagged


def test_mutual_tls_and_allow_lists_authenticate_peers(tmp_path: Path) -> None:
    channel = """\
        name: pacs
        source:
          kind: dicom
          host: 0.0.0.0
          port: 11112
          tls: {cert: certs/server.crt, key: certs/server.key, ca: certs/ca.crt, min_version: "1.3"}
          allow: [{ae_title: PACS01, address: 10.20.0.0/16}]
        destinations:
          - {name: sr, kind: dicom, host: pacs.example.test, port: 11112, called_ae: PACS01,
             tls: {ca: certs/ca.crt, min_version: "1.3"}}
        """
    root = project_with(tmp_path / "p", ENGINE, {"pacs": channel})
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    found, _ = endpoints(load_project(root))
    pacs = next(e for e in found if e.where == "channel pacs source (dicom)")
    assert (pacs.tls, pacs.mutual, pacs.min_version, pacs.peers) == (
        True,
        True,
        "1.3",
        "client certificate + allow-list",
    )
    assert pacs.judge() == ("pass", "TLS 1.3 only, mutual")
    sr = next(e for e in found if e.where == "channel pacs destination sr (dicom)")
    assert (sr.tls, sr.mutual, sr.judge()[0]) == (True, False, "pass")
    ctx = open_context(root)
    try:
        assert items(ctx)["peer-authentication"].status == "pass"
    finally:
        ctx.close()


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("ris.example.test")
