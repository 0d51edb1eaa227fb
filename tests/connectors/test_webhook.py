"""The webhook source over real HTTP(S) on 127.0.0.1: auth, limits, payload formats, outcomes,
TLS, configuration, and a real Orthanc whose Lua OnStableStudy posts to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import engine.connectors.http as webhook_module
from engine.config import lint
from engine.connectors.http import PayloadError, WebhookSource
from engine.core import registry
from engine.core.component import ComponentContext, Outcome, Problem
from engine.core.errors import ConfigError
from engine.dicom.notification import Notification
from tests import phi
from tests.connectors.fakes import Recorder
from tests.connectors.fakes import context as fake_context
from tests.orthanc import make_study, start_orthanc
from tests.tlscerts import Certs, make_certs, tls_1_1_client

WAIT = 5.0  # upper bound of any single wait here
TOKEN = "tok-" + "a1b2c3d4" * 4
SECRET = "hmac-" + "s3cr3t!x" * 4
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GENERIC = {"event": "study.stable", "study_uid": UID, "accession": phi.ACCESSION, "patient_id": phi.MRN,
           "pacs_id": "b1a2", "patient_name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"}  # fmt: skip
ORTHANC_BODY = {
    "ChangeType": "StableStudy",
    "ID": "0fd4d135-6c3cf903-1d8ef662-1d32758d-d25a98fd",
    "MainDicomTags": {"StudyInstanceUID": UID, "AccessionNumber": phi.ACCESSION, "StudyDate": "20261121"},
    "PatientMainDicomTags": {"PatientID": phi.MRN, "PatientName": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}",
                             "PatientBirthDate": phi.DOB},
}  # fmt: skip


def context(rec: Recorder, root: Path = Path("/")) -> ComponentContext:
    return fake_context(rec, root, channel="pacs-notify")


def config(**options: Any) -> WebhookSource.Config:
    return WebhookSource.Config.model_validate({"host": "127.0.0.1", "port": 0, "auth": {"bearer": TOKEN}, **options})


@asynccontextmanager
async def running(rec: Recorder, root: Path = Path("/"), **options: Any) -> AsyncIterator[WebhookSource]:
    source = WebhookSource(config(**options), context(rec, root))
    source.listens = await source.start(rec.sink)  # type: ignore[attr-defined]
    try:
        yield source
    finally:
        await asyncio.wait_for(source.stop(), WAIT * 4)


def url(source: WebhookSource, path: str = "/notify", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{source.port}{path}"


async def post(source: WebhookSource, body: Any = GENERIC, headers: dict[str, str] | None = BEARER,
               **kwargs: Any) -> httpx.Response:  # fmt: skip
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=WAIT) as client:
        return await client.post(url(source), content=content, headers=headers or {}, **kwargs)


def sign(body: bytes, secret: str = SECRET, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def no_phi(*texts: bytes | str) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        assert phi.leaks_in_bytes(data) == [], data[:300]
        assert UID.encode() not in data


# --- bearer, generic payload ---------------------------------------------------------------------


async def test_bearer_accepted_generic_payload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    async with running(rec) as source:
        r = await post(source)
    assert r.status_code == 202 and r.json() == {"status": "accepted", "id": "m1"}
    assert r.headers["connection"] == "close"  # no idle keep-alive connection can hold up stop()
    [inbound] = rec.inbounds
    n = inbound.decoded
    assert n == Notification("study.stable", UID, "webhook", (phi.ACCESSION,), phi.MRN, "b1a2")
    assert inbound.kind == "notification" and inbound.type == "study.stable"
    assert inbound.raw == n.to_json() and Notification.from_json(inbound.raw) == n
    assert inbound.dedup == hashlib.sha256(n.to_json()).hexdigest()
    assert inbound.peer.startswith("127.0.0.1:") and int(inbound.peer.split(":")[1]) > 0
    assert rec.audits == []
    no_phi(caplog.text)


async def test_same_notification_same_dedup_key_and_accessions_merge() -> None:
    rec = Recorder(Outcome("duplicate", "m0"))
    body = {"event": "study.available", "study_uid": UID, "accession": "A1", "accessions": ["A2", "A1", " "]}
    async with running(rec) as source:
        first, second = await post(source, body), await post(source, {**body, "extra": [1, 2]})
    assert first.status_code == second.status_code == 202 and first.json() == {"status": "duplicate", "id": "m0"}
    a, b = rec.inbounds
    assert a.decoded.event == "study.available" and a.decoded.accessions == ("A1", "A2")
    assert a.dedup == b.dedup and a.raw == b.raw


BAD_BEARERS = [
    ({}, "missing credentials"),
    ({"Authorization": "Bearer wrong-token-wrong-token"}, "invalid credentials"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "invalid credentials"),
    ({"Authorization": f"Basic {TOKEN}"}, "invalid credentials"),
    ({"Authorization": TOKEN}, "invalid credentials"),
]


async def test_missing_or_wrong_bearer_is_401_and_audited() -> None:
    rec = Recorder()
    async with running(rec) as source:
        responses = [await post(source, headers=headers) for headers, _ in BAD_BEARERS]
    assert rec.inbounds == []
    assert len(rec.audits) == len(BAD_BEARERS)
    for r, (action, fields), (headers, reason) in zip(responses, rec.audits, BAD_BEARERS, strict=True):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), headers
        assert action == "webhook.refused" and fields["outcome"] == "denied"
        assert fields["actor"] == "peer:127.0.0.1" and fields["peer"].startswith("127.0.0.1:")
        assert fields["detail"] == {"channel": "pacs-notify", "reason": reason}, headers
        assert TOKEN.encode() not in r.content
        no_phi(r.content)
    assert TOKEN.encode() not in rec.text()
    no_phi(rec.text())


# --- HMAC ----------------------------------------------------------------------------------------


async def test_hmac_signature_accepted() -> None:
    rec = Recorder()
    body = json.dumps(GENERIC).encode()
    async with running(rec, auth={"hmac": {"secret": SECRET}}) as source:
        for prefix in ("", "sha256=", "SHA256="):
            r = await post(source, body, {"X-Signature": prefix + sign(body)})
            assert r.status_code == 202, prefix
        upper = await post(source, body, {"X-Signature": sign(body).upper()})
    assert upper.status_code == 202 and len(rec.inbounds) == 4 and rec.audits == []
    assert rec.inbounds[0].decoded.study_uid == UID


async def test_hmac_custom_header_and_algorithm() -> None:
    rec = Recorder()
    body = json.dumps(GENERIC).encode()
    auth = {"hmac": {"secret": SECRET, "header": "X-Hub-Signature-256", "algorithm": "sha512"}}
    async with running(rec, auth=auth) as source:
        ok = await post(source, body, {"X-Hub-Signature-256": "sha512=" + sign(body, algorithm="sha512")})
        wrong_algorithm = await post(source, body, {"X-Hub-Signature-256": sign(body)})
    assert (ok.status_code, wrong_algorithm.status_code) == (202, 401)


BAD_SIGNATURES: list[tuple[Callable[[bytes], dict[str, str]], str]] = [
    (lambda body: {}, "missing signature"),
    (lambda body: {"X-Signature": ""}, "missing signature"),
    (lambda body: {"X-Signature": sign(body, secret="another-secret-of-length")}, "invalid signature"),
    (lambda body: {"X-Signature": sign(body + b" ")}, "invalid signature"),  # body changed after signing
    (lambda body: {"X-Signature": "sha256=not-hex"}, "invalid signature"),
    (lambda body: {"X-Signature": sign(body)[:-2]}, "invalid signature"),
    (lambda body: {"X-Signature": "sha512=" + sign(body)}, "invalid signature"),
    (lambda body: {"Authorization": f"Bearer {TOKEN}"}, "missing signature"),
]


async def test_hmac_missing_or_invalid_is_401_and_audited() -> None:
    rec = Recorder()
    body = json.dumps(GENERIC).encode()
    async with running(rec, auth={"hmac": {"secret": SECRET}}) as source:
        responses = [await post(source, body, make(body)) for make, _ in BAD_SIGNATURES]
    assert rec.inbounds == []
    reasons = [fields["detail"] for action, fields in rec.audits if action == "webhook.refused"]
    assert reasons == [{"channel": "pacs-notify", "reason": reason} for _, reason in BAD_SIGNATURES]
    for n, r in enumerate(responses):
        assert r.status_code == 401 and "www-authenticate" not in r.headers, n
        no_phi(r.content)
    assert SECRET.encode() not in rec.text() and sign(body).encode() not in rec.text()
    no_phi(rec.text())


# --- Orthanc format -------------------------------------------------------------------------------


async def test_orthanc_payload_parsed() -> None:
    rec = Recorder()
    async with running(rec, format="orthanc") as source:
        r = await post(source, ORTHANC_BODY)
    assert r.status_code == 202
    n = rec.inbounds[0].decoded
    assert n == Notification("study.stable", UID, "webhook", (phi.ACCESSION,), phi.MRN, ORTHANC_BODY["ID"])


async def test_orthanc_new_study_and_patient_id_among_study_tags() -> None:
    rec = Recorder()
    body = {"ChangeType": "NewStudy", "MainDicomTags": {"StudyInstanceUID": UID + "\x00", "PatientID": "P1"}}
    async with running(rec, format="orthanc") as source:
        r = await post(source, body)
    assert r.status_code == 202
    assert rec.inbounds[0].decoded == Notification("study.available", UID, "webhook", (), "P1", "")


ORTHANC_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"MainDicomTags": None}, "MainDicomTags"),
    ({"MainDicomTags": {"AccessionNumber": phi.ACCESSION}}, "MainDicomTags.StudyInstanceUID"),
    ({"MainDicomTags": [UID]}, "MainDicomTags"),
    ({"ChangeType": "StablePatient"}, "ChangeType"),
    ({"ChangeType": None}, "ChangeType"),
    ({"PatientMainDicomTags": {"PatientID": 4471902}}, "PatientMainDicomTags.PatientID"),
    ({"PatientMainDicomTags": phi.MRN}, "PatientMainDicomTags"),
    ({"MainDicomTags": {"StudyInstanceUID": UID, "AccessionNumber": 88213}}, "MainDicomTags.AccessionNumber"),
    ({"ID": 42}, "ID"),
]


async def test_orthanc_payload_errors_name_the_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder(Outcome("invalid", "m9", Problem("stored for review")))
    bodies = [{k: v for k, v in {**ORTHANC_BODY, **change}.items() if v is not None} for change, _ in ORTHANC_ERRORS]
    async with running(rec, format="orthanc") as source:
        responses = [await post(source, body) for body in bodies]
    for r, inbound, body, (_, field) in zip(responses, rec.inbounds, bodies, ORTHANC_ERRORS, strict=True):
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", field
        assert r.json()["field"] == field and field in r.json()["detail"] and r.json()["id"] == "m9"
        assert isinstance(inbound.decoded, PayloadError) and inbound.raw == json.dumps(body).encode()
        no_phi(r.content)
    no_phi(caplog.text)


# --- bad bodies -----------------------------------------------------------------------------------


async def test_malformed_json_is_400_and_kept_for_review() -> None:
    rec = Recorder(Outcome("invalid", "m7", Problem("body is not valid JSON")))
    raw = b'{"event": "study.stable", "patient_id": "' + phi.MRN.encode() + b'",'
    async with running(rec) as source:
        r = await post(source, raw)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("body is not valid JSON (line 1") and r.json()["id"] == "m7"
    [inbound] = rec.inbounds  # handed over, so the engine stores it as invalid
    assert inbound.raw == raw and isinstance(inbound.decoded, PayloadError) and inbound.kind == "notification"
    assert inbound.dedup is None and inbound.decoded.problem().code == 102
    no_phi(r.content)


async def test_missing_study_uid_is_400_naming_the_field() -> None:
    rec = Recorder(Outcome("invalid", "m8"))
    body = {k: v for k, v in GENERIC.items() if k != "study_uid"}
    async with running(rec) as source:
        r = await post(source, body)
    assert r.status_code == 400
    assert r.json() == {"type": "about:blank", "title": "Bad Request", "status": 400,
                        "detail": "missing field 'study_uid'", "field": "study_uid", "id": "m8"}  # fmt: skip
    assert rec.inbounds[0].decoded.problem().code == 101
    no_phi(r.content)


BAD_BODIES: list[tuple[Any, str | None]] = [
    (b"", None),
    (b"   ", None),
    (b"[1, 2]", None),
    (b'"study.stable"', None),
    (b"\xff\xfe\x00garbage", None),
    (b"[" * 100_000 + b"]" * 100_000, None),
    (b'{"n": ' + b"9" * 5000 + b"}", None),
    ({**GENERIC, "event": None}, "event"),
    ({**GENERIC, "event": "patient.merged"}, "event"),
    ({**GENERIC, "study_uid": None}, "study_uid"),
    ({**GENERIC, "study_uid": ""}, "study_uid"),
    ({**GENERIC, "study_uid": phi.ACCESSION}, "study_uid"),
    ({**GENERIC, "study_uid": "1." + "2" * 70}, "study_uid"),
    ({**GENERIC, "study_uid": 1.2}, "study_uid"),
    ({**GENERIC, "accession": 88213}, "accession"),
    ({**GENERIC, "accessions": phi.ACCESSION}, "accessions"),
    ({**GENERIC, "accessions": [phi.ACCESSION, 7]}, "accessions"),
    ({**GENERIC, "patient_id": {"id": phi.MRN}}, "patient_id"),
    ({**GENERIC, "pacs_id": ["x"]}, "pacs_id"),
]


async def test_bad_bodies_are_400_without_echoing_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()  # even a sink that says "accepted" cannot make an unreadable body 202
    async with running(rec) as source:
        for n, (body, field) in enumerate(BAD_BODIES):
            r = await post(source, {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body)
            assert r.status_code == 400 and r.json().get("field") == field, n
            assert isinstance(rec.inbounds[n].decoded, PayloadError), n
            no_phi(r.content)
    assert rec.audits == []
    no_phi(caplog.text)


async def test_refused_and_unavailable_for_unreadable_bodies() -> None:
    rec = Recorder(Outcome("refused", "m3", Problem("not taken here")))
    async with running(rec) as source:
        refused = await post(source, b"{")
        rec.outcome = Outcome("unavailable")
        unavailable = await post(source, b"{")
    assert refused.status_code == 422 and unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "30"


# --- size, time, address limits -------------------------------------------------------------------


async def test_oversize_body_is_413_and_audited() -> None:
    rec = Recorder()
    body = json.dumps({**GENERIC, "pad": "x" * 2048}).encode()
    async with running(rec, max_body_bytes=1024) as source:
        r = await post(source, body)
        assert r.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
            for _ in range(4):
                yield body[:600]

        async with httpx.AsyncClient(timeout=WAIT) as client:
            chunked = await client.post(url(source), content=chunks(), headers=BEARER)
        assert chunked.status_code == 413
        ok = await post(source, GENERIC)  # the listener still serves after both
    assert ok.status_code == 202 and len(rec.inbounds) == 1
    (a1, f1), (a2, f2) = rec.audits
    assert a1 == a2 == "message.oversize" and f1["outcome"] == "denied"
    assert f1["detail"] == {"channel": "pacs-notify", "limit": 1024, "bytes": len(body)}
    assert f2["detail"] == {"channel": "pacs-notify", "limit": 1024}


async def test_oversize_needs_credentials_first() -> None:
    rec = Recorder()
    async with running(rec, max_body_bytes=1024) as source:
        r = await post(source, b"x" * 2000, headers={})
    assert r.status_code == 401 and [a for a, _ in rec.audits] == ["webhook.refused"]


async def test_slow_body_is_408_and_audited() -> None:
    rec = Recorder()
    async with running(rec, read_timeout_s=0.3) as source:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", source.port), WAIT)
        writer.write(f"POST /notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 100\r\n\r\n{\"event\":".encode())  # fmt: skip
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
        writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert rec.inbounds == [] and rec.audits[0][0] == "message.truncated"
    assert rec.audits[0][1]["detail"]["reason"] == "read timeout"


async def test_allow_list() -> None:
    rec = Recorder()
    async with running(rec, allow=["10.0.0.0/8", "192.0.2.7"]) as source:
        refused = await post(source)
    async with running(rec, allow=["10.0.0.0/8", "127.0.0.0/8"]) as source:
        allowed = await post(source)
    assert refused.status_code == 403 and allowed.status_code == 202 and len(rec.inbounds) == 1
    [(action, fields)] = rec.audits
    assert action == "webhook.refused" and fields["detail"]["reason"] == "address not allowed"


async def test_forwarded_headers_do_not_fool_the_allow_list() -> None:
    rec = Recorder()
    async with running(rec, allow=["10.0.0.0/8"]) as source:
        r = await post(source, headers={**BEARER, "X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"})
    assert r.status_code == 403 and rec.inbounds == []


async def test_only_post_on_the_path() -> None:
    rec = Recorder()
    async with running(rec, path="/hooks/pacs") as source:
        async with httpx.AsyncClient(timeout=WAIT) as client:
            wrong_path = await client.post(url(source, "/notify"), json=GENERIC, headers=BEARER)
            trailing = await client.post(url(source, "/hooks/pacs/"), json=GENERIC, headers=BEARER)
            get = await client.get(url(source, "/hooks/pacs"), headers=BEARER)
            put = await client.put(url(source, "/hooks/pacs"), json=GENERIC, headers=BEARER)
            ok = await client.post(url(source, "/hooks/pacs"), json=GENERIC, headers=BEARER)
    assert (wrong_path.status_code, trailing.status_code, get.status_code, put.status_code) == (404, 404, 405, 405)
    assert get.headers["allow"] == "POST" and ok.status_code == 202 and len(rec.inbounds) == 1


# --- outcomes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome, status, detail",
    [
        (Outcome("filtered", "m2"), 202, None),
        (Outcome("refused", "m3", Problem("channel does not take study.available")), 422,
         "channel does not take study.available"),
        (Outcome("invalid", "m4", Problem("mapping: required field accession missing")), 400,
         "mapping: required field accession missing"),
        (Outcome("unavailable", None, Problem("message could not be stored; retry later")), 503,
         "message could not be stored; retry later"),
        (RuntimeError("database is locked"), 503, "notification not stored; send it again later"),
    ],
)  # fmt: skip
async def test_outcomes_map_to_status_codes(outcome: Outcome | Exception, status: int, detail: str | None) -> None:
    rec = Recorder(outcome)
    async with running(rec, retry_after_s=7) as source:
        r = await post(source)
    assert r.status_code == status
    if status == 202:
        assert r.json() == {"status": "filtered", "id": "m2"}
    else:
        assert r.json()["detail"] == detail and r.json()["status"] == status
    assert ("retry-after" in r.headers) == (status == 503)
    if status == 503:
        assert r.headers["retry-after"] == "7"


async def test_stop_answers_the_request_in_flight_and_frees_the_port() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    source = WebhookSource(config(), context(rec))
    await source.start(rec.sink)
    pending = asyncio.create_task(post(source))
    await asyncio.wait_for(rec.entered.wait(), WAIT)
    stopping = asyncio.create_task(source.stop())
    await asyncio.sleep(0.2)
    rec.gate.set()
    r = await asyncio.wait_for(pending, WAIT)
    await asyncio.wait_for(stopping, WAIT * 3)
    assert r.status_code == 202
    with socket.create_server(("127.0.0.1", source.port)):  # released
        pass
    with pytest.raises(httpx.ConnectError):
        await post(source)


async def test_port_in_use_fails_start() -> None:
    rec = Recorder()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        source = WebhookSource(config(port=busy.getsockname()[1]), context(rec))
        with pytest.raises(OSError):
            await source.start(rec.sink)


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("webhook-tls"))


def tls_options(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {"tls": {"cert": certs.server_cert.name, "key": certs.server_key.name, **extra}}


def client_tls(certs: Certs, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def ssl_reason(exc: BaseException | None) -> str | None:
    """The OpenSSL reason behind an httpx error (httpx wraps the ssl.SSLError)."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return exc.reason
        exc = exc.__cause__ or exc.__context__
    return None


async def tls_post(source: WebhookSource, context: ssl.SSLContext) -> httpx.Response:
    async with httpx.AsyncClient(verify=context, timeout=WAIT) as client:
        return await client.post(url(source, scheme="https"), json=GENERIC, headers=BEARER)


async def test_https_accepted(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls_options(certs)) as source:
        r = await tls_post(source, client_tls(certs))
        assert source.listens == [f"https://127.0.0.1:{source.port}/notify (tls 1.2+)"]  # type: ignore[attr-defined]
    assert r.status_code == 202 and len(rec.inbounds) == 1


async def test_plain_http_to_the_tls_port_fails(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls_options(certs)) as source:
        with pytest.raises(httpx.TransportError):
            await post(source)
    assert rec.inbounds == []


async def test_tls_1_1_client_is_refused(certs: Certs) -> None:
    rec = Recorder()
    old = tls_1_1_client(certs, with_cert=False)
    async with running(rec, root=certs.ca.parent, **tls_options(certs)) as source:
        with pytest.raises(httpx.ConnectError) as err:
            await tls_post(source, old)
        # The server aborts the handshake (the client sees an alert or just EOF); a client unable to
        # offer TLS 1.1 at all would fail with NO_PROTOCOLS_AVAILABLE instead.
        assert ssl_reason(err.value) in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")
        assert (await tls_post(source, client_tls(certs))).status_code == 202  # the same server does serve 1.2+
    assert len(rec.inbounds) == 1


async def test_tls_1_3_floor_refuses_a_1_2_client(certs: Certs) -> None:
    rec = Recorder()
    tls12 = client_tls(certs)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(rec, root=certs.ca.parent, **tls_options(certs, min_version="1.3")) as source:
        with pytest.raises(httpx.ConnectError):
            await tls_post(source, tls12)
    assert rec.inbounds == []


@pytest.mark.parametrize("who", ["no certificate", "stranger", "trusted"])
async def test_client_certificate_required_when_ca_set(certs: Certs, who: str) -> None:
    rec = Recorder()
    context = {
        "no certificate": client_tls(certs),
        "stranger": client_tls(certs, certs.stranger_cert, certs.stranger_key),
        "trusted": client_tls(certs, certs.client_cert, certs.client_key),
    }[who]
    async with running(rec, root=certs.ca.parent, **tls_options(certs, ca=certs.ca.name)) as source:
        assert source.listens == [  # type: ignore[attr-defined]
            f"https://127.0.0.1:{source.port}/notify (tls 1.2+, client certificates)"
        ]
        if who == "trusted":
            assert (await tls_post(source, context)).status_code == 202
        else:
            with pytest.raises(httpx.TransportError):
                await tls_post(source, context)
    assert len(rec.inbounds) == (1 if who == "trusted" else 0)


def test_unusable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "server.crt").write_text("not a certificate")
    (tmp_path / "server.key").write_text("not a key")
    cfg = config(tls={"cert": "server.crt", "key": "server.key"})
    with pytest.raises(ConfigError, match="unusable TLS files"):
        WebhookSource(cfg, context(Recorder(), tmp_path))


# --- configuration --------------------------------------------------------------------------------


def test_registered_as_source_webhook() -> None:
    component = registry.get("source", "webhook")
    assert component is not None and component.cls is WebhookSource and component.config is WebhookSource.Config


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "localhost", "radbridge.example.org"])
def test_auth_none_refused_on_a_non_loopback_host(host: str) -> None:
    with pytest.raises(ValidationError, match="auth: none is allowed only with a loopback host"):
        config(host=host, auth="none")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_auth_none_accepted_on_loopback(host: str) -> None:
    assert config(host=host, auth="none").auth.none is True


async def test_auth_none_serves_without_credentials() -> None:
    rec = Recorder()
    async with running(rec, auth="none") as source:
        r = await post(source, headers={})
    assert r.status_code == 202 and rec.audits == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"auth": None}, "Field required"),
        ({"auth": {}}, "exactly one of 'bearer' or 'hmac'"),
        ({"auth": {"bearer": TOKEN, "hmac": {"secret": SECRET}}}, "exactly one of 'bearer' or 'hmac'"),
        ({"auth": {"bearer": TOKEN, "none": True}}, "exactly one of 'bearer' or 'hmac'"),
        ({"auth": "nothing"}, "auth must be 'none' or a mapping"),
        ({"auth": {"bearer": "short-token"}}, "at least 16 characters"),
        ({"auth": {"hmac": {"secret": "short-secret"}}}, "at least 16 characters"),
        ({"auth": {"hmac": {"secret": SECRET, "header": "X Signature"}}}, "HTTP header name"),
        ({"auth": {"hmac": {"secret": SECRET, "algorithm": "md5"}}}, "sha256"),
        ({"auth": {"bearer": TOKEN, "token": TOKEN}}, "Extra inputs are not permitted"),
        ({"allow": ["10.0.0.0/8", "pacs.example.org"]}, "not an IP address or network"),
        ({"allow": []}, "at least one address"),
        ({"path": "notify"}, "should match pattern"),
        ({"path": "/notify?x=1"}, "should match pattern"),
        ({"port": 70000}, "less than or equal to 65535"),
        ({"format": "dicomweb"}, "'generic' or 'orthanc'"),
        ({"max_body_bytes": 10}, "greater than or equal to 256"),
        ({"prot": 8443}, "Extra inputs are not permitted"),
        ({"tls": {"cert": "a.crt"}}, "Field required"),
        ({"tls": {"cert": "a.crt", "key": "a.key", "min_version": "1.1"}}, "'1.2' or '1.3'"),
    ],
)
def test_config_errors(options: dict[str, Any], message: str) -> None:
    data = {"host": "0.0.0.0", "port": 8443, "auth": {"bearer": TOKEN}, **options}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValidationError, match=message) as err:
        WebhookSource.Config.model_validate(data)
    assert TOKEN not in str(err.value) and SECRET not in str(err.value)
    assert "short-token" not in str(err.value) and "short-secret" not in str(err.value)


def test_secrets_are_hidden_in_the_config_object() -> None:
    cfg = config(auth={"hmac": {"secret": SECRET}})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump()) and SECRET not in cfg.model_dump_json()


def test_lint_names_the_problem_never_the_secret(tmp_path: Path) -> None:
    channel = tmp_path / "channels" / "pacs.yaml"
    channel.parent.mkdir(parents=True)
    channel.write_text(
        "name: pacs-notify\nsource:\n  kind: webhook\n  port: 8443\n  auth: {bearer: '${WEBHOOK_TOKEN}'}\n"
    )
    diags = [str(d) for d in lint([channel], root=tmp_path, env={"WEBHOOK_TOKEN": "leaky-value"})]
    assert diags == ["channels/pacs.yaml:5:18: 'bearer' is invalid"]  # a secret's value is never quoted
    assert "leaky-value" not in "\n".join(diags)
    assert [str(d) for d in lint([channel], root=tmp_path, env={"WEBHOOK_TOKEN": TOKEN})] == []
    channel.write_text("name: pacs-notify\nsource: {kind: webhook, host: 0.0.0.0, port: 8443, auth: none}\n")
    diags = [str(d) for d in lint([channel], root=tmp_path, env={})]
    assert len(diags) == 1 and "loopback" in diags[0], diags


# --- a real Orthanc -------------------------------------------------------------------------------


def lua_from_docstring(url: str) -> str:
    """The Lua script exactly as the module documents it, pointed at `url`."""
    doc = webhook_module.__doc__ or ""
    start = doc.index("    local url = ")
    end = doc.index("\n    end\n", start) + len("\n    end\n")
    script = "\n".join(line[4:] for line in doc[start:end].splitlines()) + "\n"
    assert "https://radbridge.example.org:8443/notify" in script
    return script.replace("https://radbridge.example.org:8443/notify", url)


async def test_real_orthanc_lua_on_stable_study_reaches_the_webhook(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RADBRIDGE_WEBHOOK_TOKEN", TOKEN)  # Orthanc inherits it; the Lua script reads it
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, format="orthanc", **tls_options(certs)) as source:
        lua = lua_from_docstring(url(source, scheme="https"))
        orthanc = await asyncio.to_thread(
            start_orthanc, tmp_path / "orthanc", stable_age=1, lua=[lua], authentication=False, dicomweb=False,
            extra={"HttpsCACertificates": str(certs.ca), "HttpsVerifyPeers": True, "HttpTimeout": 5},
        )  # fmt: skip
        try:
            study_uid, instances = make_study(2)
            study_id = await asyncio.to_thread(orthanc.upload_study, instances)
            await asyncio.wait_for(rec.entered.wait(), 15)  # StableAge 1 s, checked about once a second
            # With Orthanc still up: its libcurl must not hold an idle TLS connection that delays stop().
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(source.stop(), WAIT)
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            await asyncio.to_thread(orthanc.stop)
    [inbound] = rec.inbounds
    assert inbound.decoded == Notification("study.stable", study_uid, "webhook", (phi.ACCESSION,), phi.MRN, study_id)
    assert inbound.peer.startswith("127.0.0.1:") and rec.audits == []
    no_phi(caplog.text, rec.text())
    assert study_uid not in caplog.text
