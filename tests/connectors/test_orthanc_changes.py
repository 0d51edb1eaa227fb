"""The orthanc-changes source against a real Orthanc on 127.0.0.1: notifications, resuming after a
restart, retry when the engine cannot store, Orthanc down or refusing us, bearer tokens, TLS."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from engine.connectors.orthanc import STATE_KEY, OrthancChangesSource
from engine.core.component import ComponentContext, Inbound, Outcome
from engine.core.errors import ConfigError
from engine.dicom import Notification
from tests import phi
from tests.connectors import fakes
from tests.orthanc import (  # noqa: F401 - orthanc_factory is a fixture
    PASSWORD,
    USER,
    Orthanc,
    make_study,
    orthanc_factory,
    running_orthanc,
    start_orthanc,
    tls_proxy,
)
from tests.tlscerts import Certs, make_certs

WAIT = 10.0  # upper bound of any single wait here (a study needs StableAge + ~1 s to become stable)
TOKEN = "good-token-0123456789"
BEARER_FILTER = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer {TOKEN}'
end
"""


class MemoryState(fakes.MemoryState):
    def seq(self) -> int | None:
        raw = self.values.get(STATE_KEY)
        return int(raw) if raw is not None else None


class Recorder(fakes.Recorder):
    def notifications(self) -> list[Notification]:
        return [i.decoded for i in self.inbounds]


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def config(orthanc: Orthanc | None = None, **options: Any) -> OrthancChangesSource.Config:
    """Fast polls; NewStudy (immediate) unless the test is about stability, which takes StableAge + ~1 s."""
    base: dict[str, Any] = {"poll_s": 0.1, "max_backoff_s": 0.3, "timeout_s": 3, "events": ["NewStudy"]}
    if orthanc is not None:
        base |= {"base_url": orthanc.base_url, "auth": {"username": USER, "password": PASSWORD}}
    return OrthancChangesSource.Config.model_validate(base | options)


@asynccontextmanager
async def running(
    cfg: OrthancChangesSource.Config, rec: Recorder, state: MemoryState | None, root: Path = Path("/")
) -> AsyncIterator[OrthancChangesSource]:
    ctx = ComponentContext(channel="pacs-feed", root=root, audit=rec.audit, site_tz=UTC, state=state)
    source = OrthancChangesSource(cfg, ctx)
    await source.start(rec.sink)
    try:
        yield source
    finally:
        await asyncio.wait_for(source.stop(), WAIT)


async def upload(orthanc: Orthanc, count: int = 2) -> tuple[str, str]:
    """Upload a new study; returns (StudyInstanceUID, Orthanc study id)."""
    uid, instances = make_study(count)
    return uid, await asyncio.to_thread(orthanc.upload_study, instances)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), stable_age=1) as server:
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("orthanc-tls"))


# --- notifications -----------------------------------------------------------------------------


async def test_a_stable_study_gives_one_notification(orthanc: Orthanc, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec, state = Recorder(), MemoryState()
    async with running(config(orthanc, events=["StableStudy"]), rec, state) as source:
        await until(lambda: state.seq() is not None)  # "now": the position is taken before the upload
        uid, study_id = await upload(orthanc)
        await until(lambda: len(rec.inbounds) >= 1)
        await asyncio.sleep(0.5)  # more polls: still exactly one
        assert source.emitted == 1
    [inbound] = rec.inbounds
    n = inbound.decoded
    assert isinstance(n, Notification)
    assert (n.event, n.study_uid, n.pacs_id, n.source) == ("study.stable", uid, study_id, "orthanc-changes")
    assert n.accessions == (phi.ACCESSION,) and n.patient_id == phi.MRN
    assert inbound.kind == "notification" and inbound.type == "study.stable"
    assert inbound.raw == n.to_json() and Notification.from_json(inbound.raw) == n
    assert inbound.peer == f"127.0.0.1:{orthanc.http_port}"
    seq = int(inbound.dedup.removeprefix("orthanc:"))
    assert inbound.dedup == f"orthanc:{seq}" and state.seq() is not None and state.seq() >= seq
    logs = caplog.text
    assert uid not in logs and not phi.leaks_in_bytes(logs.encode()) and PASSWORD not in logs


async def test_new_study_events_are_optional(orthanc: Orthanc) -> None:
    rec, state = Recorder(), MemoryState()
    async with running(config(orthanc, events=["NewStudy"]), rec, state):
        await until(lambda: state.seq() is not None)
        uid, study_id = await upload(orthanc)
        await until(lambda: len(rec.inbounds) >= 1)
        await asyncio.sleep(0.2)
    assert [(n.event, n.study_uid, n.pacs_id) for n in rec.notifications()] == [("study.available", uid, study_id)]


async def test_restart_resumes_where_it_stopped(orthanc: Orthanc) -> None:
    state = MemoryState()
    first = Recorder()
    async with running(config(orthanc), first, state):
        await until(lambda: state.seq() is not None)
        uid1, _ = await upload(orthanc)
        await until(lambda: len(first.inbounds) == 1)
    # while the source is down: a second study arrives and becomes stable
    uid2, _ = await upload(orthanc)
    second = Recorder()
    async with running(config(orthanc), second, state):
        await until(lambda: len(second.inbounds) >= 1)
        await asyncio.sleep(0.5)
    assert [n.study_uid for n in first.notifications()] == [uid1]
    assert [n.study_uid for n in second.notifications()] == [uid2]
    assert {i.dedup for i in first.inbounds}.isdisjoint(i.dedup for i in second.inbounds)


async def test_stop_waits_for_the_notification_in_flight(orthanc: Orthanc) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()

    class Slow(Recorder):
        async def sink(self, inbound: Inbound) -> Outcome:
            self.inbounds.append(inbound)
            entered.set()
            await asyncio.wait_for(gate.wait(), WAIT)
            return Outcome("accepted", "m1")

    rec, state = Slow(), MemoryState()
    async with running(config(orthanc), rec, state) as source:
        await until(lambda: state.seq() is not None)
        await upload(orthanc)
        await asyncio.wait_for(entered.wait(), WAIT)
        stopping = asyncio.create_task(source.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # held by the notification in flight
        gate.set()
        await asyncio.wait_for(stopping, WAIT)
    seq = int(rec.inbounds[0].dedup.removeprefix("orthanc:"))
    assert state.seq() == seq  # saved: a restart does not hand it over again
    again = Recorder()
    async with running(config(orthanc), again, state):
        await until(lambda: (state.seq() or 0) >= seq)
        await asyncio.sleep(0.3)
    assert again.inbounds == []


async def test_start_now_skips_older_studies_and_beginning_reads_them(orthanc: Orthanc) -> None:
    uid_old, _ = await upload(orthanc)
    last = await asyncio.to_thread(orthanc.last_change)
    now, state_now = Recorder(), MemoryState()
    async with running(config(orthanc), now, state_now):
        await until(lambda: state_now.seq() is not None)
        await asyncio.sleep(0.3)
    assert now.inbounds == [] and (state_now.seq() or 0) >= last
    everything, state_all = Recorder(), MemoryState()
    async with running(config(orthanc, start="beginning", batch=2), everything, state_all):
        await until(lambda: uid_old in [n.study_uid for n in everything.notifications()])
    seqs = [int(i.dedup.removeprefix("orthanc:")) for i in everything.inbounds]
    assert seqs == sorted(set(seqs))  # in feed order, across pages of 2 changes, each once


async def test_unavailable_engine_retries_the_same_change(orthanc: Orthanc) -> None:
    answers = iter(["unavailable", "unavailable", "accepted"])
    rec, state = Recorder(lambda _i: Outcome(next(answers, "accepted"), None)), MemoryState()  # type: ignore[arg-type]
    async with running(config(orthanc), rec, state):
        await until(lambda: state.seq() is not None)
        before = state.seq()
        uid, _ = await upload(orthanc)
        await until(lambda: len(rec.inbounds) >= 1)
        stable_seq = int(rec.inbounds[0].dedup.removeprefix("orthanc:"))
        # refused twice: the position stays before the NewStudy change until the engine accepts it
        assert state.seq() is not None and state.seq() < stable_seq and state.seq() >= before
        await until(lambda: len(rec.inbounds) >= 3)
        await until(lambda: (state.seq() or 0) >= stable_seq)
        await asyncio.sleep(0.3)
    assert [i.dedup for i in rec.inbounds] == [f"orthanc:{stable_seq}"] * 3
    assert {n.study_uid for n in rec.notifications()} == {uid}


async def test_deleted_study_is_skipped(orthanc: Orthanc) -> None:
    rec, state = Recorder(), MemoryState()
    state.values[STATE_KEY] = str(await asyncio.to_thread(orthanc.last_change)).encode()
    _, study_id = await upload(orthanc)
    with orthanc.client() as http:
        assert http.delete(f"/studies/{study_id}").status_code == 200
    start = await asyncio.to_thread(orthanc.last_change)
    async with running(config(orthanc), rec, state):
        await until(lambda: (state.seq() or 0) >= start)
    assert rec.inbounds == []


async def test_feed_reset_reads_the_new_log_from_the_beginning(orthanc: Orthanc) -> None:
    rec, state = Recorder(), MemoryState()
    state.values[STATE_KEY] = b"999999"  # a position from an Orthanc whose database was since replaced
    async with running(config(orthanc), rec, state):
        await until(lambda: len(rec.inbounds) >= 1)
    assert [a for a, _ in rec.audits] == ["pacs.feed_reset"]
    assert rec.audits[0][1]["detail"]["saved"] == 999999


# --- Orthanc down, refusing, bearer, TLS --------------------------------------------------------


async def test_orthanc_down_at_start_then_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="radbridge.orthanc")
    server = start_orthanc(tmp_path / "late", stable_age=1, start=False)
    rec, state = Recorder(), MemoryState()
    try:
        async with running(config(server), rec, state) as source:
            await until(lambda: "unavailable (ConnectError)" in caplog.text)
            assert source._task is not None and not source._task.done()
            await asyncio.to_thread(server.start)
            await until(lambda: state.seq() is not None)
            uid, _ = await upload(server)
            await until(lambda: len(rec.inbounds) == 1)
            # down again while running: logged, no crash, and it picks up after the restart
            await asyncio.to_thread(server.stop, 0.3)
            await until(lambda: caplog.text.count("unavailable") >= 2)
            await asyncio.to_thread(server.start)
            uid2, _ = await upload(server)
            await until(lambda: len(rec.inbounds) == 2)
    finally:
        server.stop(0.3)
    assert [n.study_uid for n in rec.notifications()] == [uid, uid2]


async def test_wrong_credentials_are_logged_and_audited_once(
    orthanc: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()
    bad = config(orthanc, auth={"username": USER, "password": "wrong-password-77"})
    async with running(bad, rec, MemoryState()) as source:
        await until(lambda: caplog.text.count("HTTP 401") >= 3)
        assert source._task is not None and not source._task.done()
    assert rec.inbounds == []
    assert [a for a, _ in rec.audits] == ["pacs.unauthorized"]
    fields = rec.audits[0][1]
    assert fields["outcome"] == "denied" and fields["detail"]["status"] == 401
    assert fields["peer"] == f"127.0.0.1:{orthanc.http_port}"
    assert "wrong-password-77" not in caplog.text and "wrong-password-77" not in repr(rec.audits)


async def test_bearer_token(orthanc_factory: Callable[..., Orthanc]) -> None:  # noqa: F811 - the fixture
    server = orthanc_factory(stable_age=1, authentication=False, lua=[BEARER_FILTER])
    rec, state = Recorder(), MemoryState()
    cfg = config(base_url=server.base_url, auth={"bearer": TOKEN})
    async with running(cfg, rec, state):
        await until(lambda: state.seq() is not None)
        uid, _ = await upload_plain(server, {"Authorization": f"Bearer {TOKEN}"})
        await until(lambda: len(rec.inbounds) == 1)
    assert rec.notifications()[0].study_uid == uid
    wrong = Recorder()
    async with running(config(base_url=server.base_url, auth={"bearer": "not-the-token-000"}), wrong, None):
        await until(lambda: len(wrong.audits) == 1)
    assert wrong.audits[0][0] == "pacs.unauthorized" and wrong.audits[0][1]["detail"]["status"] == 403


async def upload_plain(server: Orthanc, headers: dict[str, str]) -> tuple[str, str]:
    uid, instances = make_study(1)

    def post() -> str:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
            r = http.post("/instances", content=instances[0])
            r.raise_for_status()
            return str(r.json()["ParentStudy"])

    return uid, await asyncio.to_thread(post)


async def test_https_with_our_ca(orthanc: Orthanc, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="radbridge.orthanc")
    async with tls_proxy(orthanc.http_port, certs.server_cert, certs.server_key) as port:
        rec, state = Recorder(), MemoryState()
        cfg = config(orthanc, base_url=f"https://127.0.0.1:{port}", tls={"ca": certs.ca.name})
        async with running(cfg, rec, state, root=certs.ca.parent):
            await until(lambda: state.seq() is not None)
            uid, _ = await upload(orthanc)
            await until(lambda: len(rec.inbounds) == 1)
        assert rec.notifications()[0].study_uid == uid and rec.inbounds[0].peer == f"127.0.0.1:{port}"
        # without our CA (the system store) the server is not trusted: logged, nothing emitted, no crash
        untrusted = Recorder()
        cfg = config(orthanc, base_url=f"https://127.0.0.1:{port}")
        async with running(cfg, untrusted, MemoryState()):
            await until(lambda: "unavailable (ConnectError)" in caplog.text)
        assert untrusted.inbounds == []


async def test_tls_1_3_floor_refuses_a_1_2_only_server(
    orthanc: Orthanc, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="radbridge.orthanc")
    async with tls_proxy(orthanc.http_port, certs.server_cert, certs.server_key, max_version="1.2") as port:
        rec, state = Recorder(), MemoryState()
        cfg = config(orthanc, base_url=f"https://127.0.0.1:{port}", tls={"ca": certs.ca.name, "min_version": "1.3"})
        async with running(cfg, rec, state, root=certs.ca.parent):
            await until(lambda: "unavailable (ConnectError)" in caplog.text)
        assert state.seq() is None and rec.inbounds == []


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, words",
    [
        ({"base_url": "ftp://pacs:21"}, "http:// or https://"),
        ({"base_url": "http://user:pw@pacs:8042"}, "must not hold credentials"),
        ({"base_url": "http://pacs:8042", "auth": {"username": "u"}}, "go together"),
        ({"base_url": "http://pacs:8042", "auth": {"username": "u", "password": "p", "bearer": "t"}}, "either"),
        ({"base_url": "http://pacs:8042", "auth": {}}, "either"),
        ({"base_url": "http://pacs:8042", "tls": {"ca": "ca.pem"}}, "not https"),
        ({"base_url": "https://pacs:8042", "tls": {"cert": "c.pem"}}, "go together"),
        ({"base_url": "http://pacs:8042", "events": []}, "at least 1"),
        ({"base_url": "http://pacs:8042", "events": ["StablePatient"]}, "StableStudy"),
        ({"base_url": "http://pacs:8042", "start": "yesterday"}, "now"),
        ({"base_url": "http://pacs:8042", "poll_s": 0}, "greater than 0"),
        ({"base_url": "http://pacs:8042", "prot": 1}, "Extra inputs"),
    ],
)
def test_bad_configs_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        OrthancChangesSource.Config.model_validate(options)
    assert words in str(info.value)


def test_secrets_never_show_in_the_config_repr() -> None:
    cfg = OrthancChangesSource.Config.model_validate(
        {"base_url": "http://pacs:8042", "auth": {"username": "u", "password": "hunter2-secret"}}
    )
    assert "hunter2-secret" not in repr(cfg) and "hunter2-secret" not in str(cfg.model_dump())


def test_unusable_tls_files_fail_the_build(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    cfg = OrthancChangesSource.Config.model_validate({"base_url": "https://pacs:8042", "tls": {"ca": "ca.pem"}})
    ctx = ComponentContext(channel="pacs-feed", root=tmp_path, audit=Recorder().audit, site_tz=UTC)
    with pytest.raises(ConfigError, match="unusable TLS files"):
        OrthancChangesSource(cfg, ctx)


def test_registered() -> None:
    from engine.core import registry

    assert registry.get("source", "orthanc-changes").cls is OrthancChangesSource  # type: ignore[union-attr]


def test_harness_reports_an_orthanc_that_cannot_start(tmp_path: Path, orthanc: Orthanc) -> None:
    # the HTTP port is taken (by the module's Orthanc): Orthanc exits, the harness says so at once
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code") as info:
        start_orthanc(tmp_path / "clash", http_port=orthanc.http_port)
    assert time.monotonic() - started < 10 and not phi.leaks_in_bytes(str(info.value).encode())
