"""The Storage SCU destination against dcmtk storescp and our own listener, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.core.component import Outcome
from engine.core.errors import PermanentError, RetryableError
from tests.connectors.test_dicom_source import TOOLS_ENV, WAIT, Recorder, destination, no_phi_in_logs, outbound, running
from tests.dicomdata import COMPRESSED, KB, dataset_part, make_instance, part10_bytes

__all__ = ["no_phi_in_logs"]  # the autouse fixture: every log line of these tests is free of fake PHI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Storescp:
    port: int
    folder: Path
    proc: asyncio.subprocess.Process
    log: Path

    def received(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)]

    def associations(self) -> int:
        return self.log.read_text(errors="replace").count("Association Acknowledged")  # not the readiness probe


@asynccontextmanager
async def storescp(tmp_path: Path, *options: str) -> AsyncIterator[Storescp]:
    """dcmtk's storescp (TCP_NODELAY=1) writing what it receives into a folder, stopped afterwards."""
    folder, log = tmp_path / "received", tmp_path / "storescp.log"
    folder.mkdir()
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "storescp", "-v", "-aet", "PACS", "-od", str(folder), *options, str(port),
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=TOOLS_ENV,
        )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        yield Storescp(port, folder, proc, log)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


async def test_instances_arrive_byte_identical_on_one_association(tmp_path: Path) -> None:
    bodies = [part10_bytes(make_instance(pixel_bytes=256 * KB, number=n)) for n in range(1, 4)]
    async with storescp(tmp_path, "+xa") as scp:
        dest = destination(scp.port, called_ae="PACS")
        for n, body in enumerate(bodies):
            assert (await dest.send(outbound(body, f"m{n}"))).detail == "C-STORE 0x0000"
        sock = dest._assoc.dul.socket.socket  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await dest.close()
        await asyncio.sleep(0.2)
        received = scp.received()
        assert scp.associations() == 1 and dest.associations == 1
    assert [dataset_part(r) for r in received] == [dataset_part(b) for b in bodies]


async def test_compressed_instances_go_out_as_they_are(tmp_path: Path) -> None:
    bodies = [part10_bytes(make_instance(pixel_bytes=64 * KB))]
    bodies += [part10_bytes(make_instance(pixel_bytes=64 * KB, transfer_syntax=ts)) for ts in COMPRESSED.values()]
    async with storescp(tmp_path, "+xa") as scp:
        dest = destination(scp.port, called_ae="PACS")
        for n, body in enumerate(bodies):
            assert (await dest.send(outbound(body, f"m{n}"))).detail == "C-STORE 0x0000"
        assert dest.associations == 4  # each new transfer syntax renegotiated, the earlier ones proposed again
        assert (await dest.send(outbound(bodies[0], "again"))).detail == "C-STORE 0x0000"
        assert dest.associations == 4
        await dest.close()
        await asyncio.sleep(0.2)
        received = scp.received()
    assert sorted(dataset_part(r) for r in received[:4]) == sorted(dataset_part(b) for b in bodies)


@pytest.mark.parametrize("policy, error", [("dead", PermanentError), ("retry", RetryableError)])
async def test_a_transfer_syntax_the_peer_refuses(tmp_path: Path, policy: str, error: type[Exception]) -> None:
    jpeg = part10_bytes(make_instance(pixel_bytes=16 * KB, transfer_syntax=COMPRESSED["jpeg"]))
    async with storescp(tmp_path) as scp:  # uncompressed only: never decompressed for it
        dest = destination(scp.port, called_ae="PACS", on_failure=policy)
        with pytest.raises(error, match="accepts no presentation context for CTImageStorage in JPEG Baseline"):
            await dest.send(outbound(jpeg))
        await dest.close()
        assert scp.received() == []


async def test_idle_association_is_released_and_reopened(tmp_path: Path) -> None:
    body = part10_bytes(make_instance(pixel_bytes=8 * KB))
    async with storescp(tmp_path, "+xa") as scp:
        dest = destination(scp.port, called_ae="PACS", idle_s=0.2)
        await dest.send(outbound(body, "m1"))
        await asyncio.sleep(0.8)
        assert dest._assoc is None
        await dest.send(outbound(body, "m2"))
        await dest.close()
        await asyncio.sleep(0.2)
        assert dest.associations == 2 and scp.associations() == 2
        assert scp.log.read_text().count("Association Release") == 2


async def test_idle_zero_releases_after_every_send(tmp_path: Path) -> None:
    body = part10_bytes(make_instance(pixel_bytes=8 * KB))
    async with storescp(tmp_path, "+xa") as scp:
        dest = destination(scp.port, called_ae="PACS", idle_s=0)
        await dest.send(outbound(body, "m1"))
        assert dest._assoc is None
        await dest.send(outbound(body, "m2"))
        await dest.close()
    assert dest.associations == 2


async def test_a_refused_association_is_retryable(tmp_path: Path) -> None:
    async with storescp(tmp_path, "--refuse") as scp:
        dest = destination(scp.port, called_ae="PACS")
        with pytest.raises(RetryableError, match="association rejected"):
            await dest.send(outbound(part10_bytes(make_instance(pixel_bytes=4 * KB))))
        await dest.close()


async def test_a_closed_port_is_retryable() -> None:
    dest = destination(free_port(), called_ae="PACS", connect_timeout_s=2)
    with pytest.raises(RetryableError, match="no connection"):
        await asyncio.wait_for(dest.send(outbound(part10_bytes(make_instance(pixel_bytes=4 * KB)))), WAIT)
    await dest.close()


async def test_not_a_dicom_instance_is_permanent() -> None:
    dest = destination(free_port(), called_ae="PACS")
    with pytest.raises(PermanentError, match="not a DICOM instance"):
        await dest.send(outbound(b"MSH|^~\\&|not dicom"))
    with pytest.raises(PermanentError, match="not a DICOM instance"):
        await dest.send(outbound(part10_bytes(make_instance(pixel_bytes=1 * KB))[:140]))


async def test_no_response_within_dimse_timeout_is_retryable_and_reassociates() -> None:
    rec = Recorder()
    rec.delay = 2.0
    body = part10_bytes(make_instance(pixel_bytes=4 * KB))
    async with running(rec, sink_timeout_s=5) as source:
        dest = destination(source.port, dimse_timeout_s=0.5)
        with pytest.raises(RetryableError, match="no C-STORE response"):
            await dest.send(outbound(body))
        rec.delay = 0
        assert (await dest.send(outbound(body, "m2"))).detail == "C-STORE 0x0000"
        assert dest.associations == 2
        await dest.close()


async def test_peer_abort_mid_send_fails_fast() -> None:
    rec = Recorder(Outcome("accepted"))
    body = part10_bytes(make_instance(pixel_bytes=512 * KB))
    async with running(rec, max_instance_bytes=64 * KB, max_pdu=16384) as source:
        dest = destination(source.port, dimse_timeout_s=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RetryableError):
            await dest.send(outbound(body))
        assert loop.time() - started < 5
        await dest.close()
    assert rec.inbounds == []


async def test_peer_failure_status_follows_on_failure() -> None:
    body = part10_bytes(make_instance(pixel_bytes=4 * KB))
    for policy, error in (("dead", PermanentError), ("retry", RetryableError)):
        rec = Recorder(Outcome("refused"))
        async with running(rec) as source:
            dest = destination(source.port, on_failure=policy)
            with pytest.raises(error, match=r"C-STORE 0x0124 \(Failure\) for message m1"):
                await dest.send(outbound(body))
            await dest.close()
