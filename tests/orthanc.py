"""A real Orthanc for tests: started on free 127.0.0.1 ports with its own temporary storage, stopped
at teardown, plus helpers to make fake studies, upload them and wait for them to be stable.

Orthanc 1.10 answers GET /system 0.1-0.3 s after it is started here (SQLite index in a fresh folder,
no jobs saved); `start_orthanc` waits at most START_TIMEOUT_S for it. A clean stop takes Orthanc about
3.5 s, so stop() sends SIGTERM and SIGKILL after a grace: STOP_TIMEOUT_S when the storage is reused
(a restart), TEARDOWN_GRACE_S for throwaway servers. No test can hang on it. Its output goes to a log
file in its folder, never printed except its tail, with lines holding the fake PHI dropped, when it
fails to start. Orthanc 1.10's own HTTPS crashes with this system's OpenSSL (civetweb segfaults), so
HTTPS tests put `tls_proxy` in front of it; its DICOM TLS (DCMTK) works.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from engine.security.tls import server_context
from tests import phi

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
TEARDOWN_GRACE_S = 0.3
USER, PASSWORD = "radbridge", "test-secret-1"  # Orthanc's own test account, not a real secret
HTTP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have_orthanc() -> bool:
    return os.access(ORTHANC, os.X_OK)


def have_dicomweb() -> bool:
    return DICOMWEB_PLUGIN.exists()


@dataclass
class Orthanc:
    """A running (or stopped) Orthanc; ports and folders stay the same across stop/start."""

    folder: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    started_in_s: float = 0.0
    _log: Any = field(default=None, repr=False)
    _log_start: int = 0

    @property
    def http_port(self) -> int:
        return int(self.config["HttpPort"])

    @property
    def dicom_port(self) -> int:
        return int(self.config["DicomPort"])

    @property
    def aet(self) -> str:
        return str(self.config["DicomAet"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (USER, PASSWORD) if self.config.get("AuthenticationEnabled") else None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=self.auth, timeout=HTTP_TIMEOUT_S)

    # -- process

    def start(self, timeout: float = START_TIMEOUT_S) -> Orthanc:
        if self.proc is not None and self.proc.poll() is None:
            return self
        config_path = self.folder / "config.json"
        config_path.write_text(json.dumps(self.config, indent=1))
        self._log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()  # a restart appends: look only at this run's lines
        env = {**os.environ, "TCP_NODELAY": "1"}
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [ORTHANC, str(config_path)], cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = started + timeout
        log_path = self.folder / "orthanc.log"
        scheme = "https" if self.config.get("SslEnabled") else "http"
        with httpx.Client(auth=self.auth, timeout=1.0, verify=False) as http:  # noqa: S501 - a readiness probe
            while True:
                if self.proc.poll() is not None:
                    self._fail(f"Orthanc exited with code {self.proc.returncode} while starting")
                # Its own log first: another server already on the port would answer the probe too
                if b"Orthanc has started" in log_path.read_bytes()[self._log_start :]:
                    try:  # any answer will do: a Lua filter or wrong credentials may refuse the probe itself
                        http.get(f"{scheme}://127.0.0.1:{self.http_port}/system")
                        break
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    self.stop()
                    self._fail(f"Orthanc did not answer GET /system within {timeout:g} s")
                time.sleep(0.05)
        self.started_in_s = time.monotonic() - started
        return self

    def _fail(self, why: str) -> None:
        tail = (self.folder / "orthanc.log").read_bytes()[-4000:]
        lines = [ln for ln in tail.splitlines() if not phi.leaks_in_bytes(ln)]
        raise RuntimeError(why + "\n" + b"\n".join(lines[-20:]).decode(errors="replace"))

    def stop(self, grace: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after `grace` s. Orthanc 1.10 takes ~3.5 s to stop cleanly, so
        teardowns of throwaway servers pass a short grace (SQLite survives a kill)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- REST helpers (blocking; call them with asyncio.to_thread while an event loop must keep running)

    def upload(self, raw: bytes) -> dict[str, Any]:
        """POST /instances: {"ID", "ParentStudy", "ParentSeries", "ParentPatient", "Status", ...}."""
        with self.client() as http:
            r = http.post("/instances", content=raw, headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            return dict(r.json())

    def upload_study(self, instances: list[bytes]) -> str:
        """Upload every instance; returns Orthanc's study id."""
        ids = {self.upload(raw)["ParentStudy"] for raw in instances}
        assert len(ids) == 1, "the instances belong to more than one study"
        return ids.pop()

    def wait_stable(self, study_id: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while not http.get(f"/studies/{study_id}").json().get("IsStable"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"study {study_id} not stable within {timeout:g} s")
                time.sleep(0.1)

    def study_instances(self, study_id: str) -> list[str]:
        with self.client() as http:
            r = http.get(f"/studies/{study_id}/instances")
            r.raise_for_status()
            return [i["ID"] for i in r.json()]

    def instance_file(self, instance_id: str) -> bytes:
        with self.client() as http:
            r = http.get(f"/instances/{instance_id}/file")
            r.raise_for_status()
            return r.content

    def last_change(self) -> int:
        with self.client() as http:
            return int(http.get("/changes", params={"last": ""}).json()["Last"])


def orthanc_config(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    http_port: int | None = None,
    dicom_port: int | None = None,
    modalities: dict[str, list[Any]] | None = None,
    stable_age: int = 2,
    lua: list[str] | None = None,
    authentication: bool = True,
    dicomweb: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Orthanc's configuration: loopback-only HTTP, lenient DICOM acceptance, no saved jobs."""
    lua_paths = []
    for n, source in enumerate(lua or ()):
        path = folder / f"script{n}.lua"
        path.write_text(source)
        lua_paths.append(str(path))
    config: dict[str, Any] = {
        "Name": "radbridge-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port or free_port(),
        "DicomServerEnabled": True,
        "DicomPort": dicom_port or free_port(),
        "DicomAet": aet,
        "RemoteAccessAllowed": False,  # Orthanc 1.10 has no bind address: this refuses non-loopback clients
        "AuthenticationEnabled": authentication,
        "RegisteredUsers": {USER: PASSWORD} if authentication else {},
        "DicomModalities": dict(modalities or {}),
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "StableAge": stable_age,
        "LuaScripts": lua_paths,
        "SaveJobs": False,
        "DicomScuTimeout": 5,
        "DicomAssociationCloseDelay": 0,
        "HttpDescribeErrors": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb and have_dicomweb() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    config.update(extra or {})
    return config


def start_orthanc(folder: Path, *, start: bool = True, **options: Any) -> Orthanc:
    """Configure (see orthanc_config) and, unless start=False, start an Orthanc in `folder`."""
    if not have_orthanc():
        pytest.skip(f"{ORTHANC} is not installed (make peers)")
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(folder, orthanc_config(folder, **options))
    return server.start() if start else server


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """`orthanc_factory(**options)` starts an Orthanc (see orthanc_config); all are stopped at teardown."""
    servers: list[Orthanc] = []

    def make(**options: Any) -> Orthanc:
        server = start_orthanc(tmp_path / f"orthanc{len(servers)}", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(TEARDOWN_GRACE_S)


@contextlib.contextmanager
def running_orthanc(folder: Path, **options: Any) -> Iterator[Orthanc]:
    """The same as a context manager, for module-scoped fixtures; the folder is removed afterwards."""
    server = start_orthanc(folder, **options)
    try:
        yield server
    finally:
        server.stop(TEARDOWN_GRACE_S)
        shutil.rmtree(folder, ignore_errors=True)


# --- fake studies ------------------------------------------------------------------------------


def make_instance(
    study_uid: str, series_uid: str, number: int, *, transfer_syntax: UID = ExplicitVRLittleEndian
) -> bytes:
    """A small CT instance (8x8 pixels) with the fake PHI of tests/phi.py, as Part 10 bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName = f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"
    ds.PatientID, ds.PatientBirthDate, ds.PatientSex = phi.MRN, phi.DOB, "F"
    ds.AccessionNumber = phi.ACCESSION
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20261121", "101500", "1"
    ds.Modality, ds.BodyPartExamined = "CT", "HEAD"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = b"".join(((i * number) & 0x0FFF).to_bytes(2, "little") for i in range(64))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # encoded in file_meta's transfer syntax
    return out.getvalue()


def make_study(
    count: int = 3, *, transfer_syntaxes: tuple[UID, ...] = (ExplicitVRLittleEndian,)
) -> tuple[str, list[bytes]]:
    """(StudyInstanceUID, Part 10 instances) of one series; transfer syntaxes are used in turn."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = [
        make_instance(study_uid, series_uid, n + 1, transfer_syntax=transfer_syntaxes[n % len(transfer_syntaxes)])
        for n in range(count)
    ]
    return study_uid, instances


# --- TLS in front of Orthanc -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_proxy(target_port: int, cert: Path, key: Path, max_version: str | None = None) -> AsyncIterator[int]:
    """A TLS-terminating proxy on a free 127.0.0.1 port forwarding to Orthanc's plain HTTP port, as a
    reverse proxy would in production (Orthanc 1.10's own HTTPS crashes with this system's OpenSSL)."""
    context = server_context(str(cert), str(key))
    if max_version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target_port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
