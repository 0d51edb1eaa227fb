"""DICOM C-STORE ingest through the whole engine, against a bare pynetdicom SCP, Orthanc and dcmtk.

One study of N synthetic CT instances (default 200 x 512 KB pixel data, fake PHI from tests/phi.py) is
written once to a temp folder with tests/dicomdata.py, then one dcmtk `storescu` process (one
association, TCP_NODELAY=1) sends all of it to each receiver in turn, in this one run:

  engine    `radbridge run` on a throwaway project with its own keyring; channel
            `source: {kind: dicom, ...}` with `study: {quiet_s: 30}`: each instance parsed, sealed under
            its own data key into the blob folder (fsync), stored, audited and added to its study in
            one transaction. Checked afterwards: every instance is in the `instances` table, and none
            of the fake PHI is in clear anywhere in the project folder (database, WAL, blobs, log).
  bare-scp  pynetdicom Storage SCP in its own process that writes each dataset's raw bytes to a file
            (no parsing, no fsync), same max PDU as the engine (262144), TCP_NODELAY on its sockets.
  bare-seal the same SCP, but each dataset is sealed (AES-256-GCM) and written with the engine's own
            BlobFolder.put (fsync of file and folder) before Success: the floor for any receiver that
            keeps instances encrypted and durable before it answers, with nothing parsed or stored.
  orthanc   Orthanc 1.10 (tests/orthanc.py, TCP_NODELAY=1, its defaults: SQLite index, synced storage).
  storescp  dcmtk storescp -od <dir> (TCP_NODELAY=1, its defaults).

Time: from storescu's "Association Accepted" to its "Releasing Association" (read live from its -v
log), so process start and storescu's own scan of the input files are excluded; the whole storescu
wall time is printed too. MB = 2^20 bytes of Part 10 files sent. Every receiver must answer Success
to all N instances, or the run fails. Each send starts after os.sync(), so no receiver's fsyncs wait
on the writeback of files an earlier phase wrote.

Folders are kept until the end of the run, then removed. Run after run, allow ~30 s between them:
ext4 creates files slowly (here ~1.4 ms each instead of ~0.02) for about 30 s after many were
deleted, and every receiver here creates one file per instance.

Then the engine's peak RSS (VmHWM from /proc/<pid>/status, read after the load, before it stops)
while it ingests a study of --rss-instances (default 2000) instances of the same size, and its disk use.

    .venv/bin/python benchmarks/dicom_bench.py [--instances 200] [--size-kb 512] [--rss-instances 2000]
                                               [--skip-rss] [--skip-orthanc]

BENCH_ENGINE_PREFIX="py-spy record -o engine.svg --" profiles the engine process (as in mllp_bench).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.security import keyring  # noqa: E402
from tests.dicomdata import KB, write_study  # noqa: E402
from tests.phi import leaks_in_tree  # noqa: E402

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk and Orthanc leave Nagle on without it
MIB = 1 << 20
MAX_PDU = 262144  # the engine's default max_pdu; the bare SCP uses the same
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sent:
    instances: int
    megabytes: float
    seconds: float  # association accepted -> releasing
    wall: float  # the whole storescu process
    pdv: str  # max send PDV the receiver allowed

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    @property
    def mbps(self) -> float:
        return self.megabytes / self.seconds


def storescu(port: int, called_ae: str, paths: list[Path], timeout: float) -> Sent:
    """Send every file on one association; timed from the association's acceptance to its release."""
    marks: dict[str, float] = {}
    successes = failures = 0
    pdv = "?"
    os.sync()  # start from clean page cache: writeback of earlier phases' files would slow this one's fsyncs
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["storescu", "-v", "-aet", "BENCHSCU", "-aec", called_ae, "127.0.0.1", str(port), *map(str, paths)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=PEER_ENV,
    )  # fmt: skip
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    tail: list[str] = []
    try:
        for line in proc.stderr:  # type: ignore[union-attr]  # dcmtk's log, one flushed line at a time
            now = time.perf_counter()
            if "Association Accepted" in line:
                marks["accepted"] = now
                pdv = line.split("Max Send PDV:")[-1].strip(" )\n")
            elif "Releasing Association" in line:
                marks["released"] = now
            elif "Received Store Response" in line:
                if "(Success)" in line:
                    successes += 1
                else:
                    failures += 1
            elif not line.startswith(("I: Sending", "I: Converting")):
                tail = (tail + [line.rstrip()])[-5:]  # errors only; file names hold no PHI, statuses neither
        code = proc.wait()
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    if code != 0 or successes != len(paths) or "released" not in marks:
        raise SystemExit(f"storescu to {called_ae}: exit {code}, {successes} success, {failures} other: {tail}")
    megabytes = sum(p.stat().st_size for p in paths) / MIB
    return Sent(len(paths), megabytes, marks["released"] - marks["accepted"], wall, pdv)


# -- the engine ----------------------------------------------------------------------------------


def make_project(root: Path, port: int) -> None:
    (root / "config").mkdir(parents=True)
    (root / "channels").mkdir()
    (root / "config" / "engine.yaml").write_text(
        f"node: {{id: bench}}\nkeys: {{source: file, file: keys/keyring.json, allow_dev_key: false}}\n"
        f"listeners: [{{name: api, host: 127.0.0.1, port: {free_port()}}}]\n"
    )
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    (root / "channels" / "images.yaml").write_text(
        textwrap.dedent(f"""\
        name: images
        source: {{kind: dicom, host: 127.0.0.1, port: {port}, ae_title: RADBRIDGE}}
        study: {{quiet_s: 30}}
        """)
    )


@dataclass
class EngineRun:
    sent: Sent
    peak_rss_mb: float
    faults: int  # minor page faults of the engine process, start to end of the load
    cpu_s: float  # its user + system CPU time, start to end of the load
    stored: int
    disk_mb: float
    leaks: dict[str, list[str]]


def run_engine(folder: Path, paths: list[Path], *, scan: bool) -> EngineRun:
    port = free_port()
    make_project(folder, port)
    prefix = os.environ.get("BENCH_ENGINE_PREFIX", "").split()
    with open(folder / "engine.log", "wb") as log:  # inside the project: scanned for PHI with the rest
        engine = subprocess.Popen(
            [*prefix, sys.executable, "-m", "engine.cli", "run", "--root", str(folder)],
            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (line := engine.stdout.readline()).startswith("ready"):  # type: ignore[union-attr]
            if not line or time.monotonic() > deadline:
                raise SystemExit(f"engine did not start; see {folder / 'engine.log'}")
        pid = _engine_pid(engine)
        faults, cpu = _stat(pid)
        sent = storescu(port, "RADBRIDGE", paths, timeout=60 + len(paths))
        peak = _status_kb(pid, "VmHWM") / 1024
        faults_after, cpu_after = _stat(pid)
    finally:
        if engine.poll() is None:  # to the engine itself: a profiler under BENCH_ENGINE_PREFIX writes on its exit
            os.kill(_engine_pid(engine), signal.SIGTERM)
        try:
            engine.wait(timeout=60)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
    with sqlite3.connect(f"file:{folder / 'data' / 'radbridge.db'}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT count(*) FROM instances").fetchone()[0]
    disk = sum(p.stat().st_size for p in (folder / "data").rglob("*") if p.is_file()) / MIB
    leaks = leaks_in_tree(folder) if scan else {}
    return EngineRun(sent, peak, faults_after - faults, cpu_after - cpu, stored, disk, leaks)


def _engine_pid(proc: subprocess.Popen[str]) -> int:
    """The engine's own process: proc itself, or its child under a BENCH_ENGINE_PREFIX such as py-spy."""
    for pid in _children(proc.pid):
        try:
            if b"engine.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    return proc.pid


def _stat(pid: int) -> tuple[int, float]:
    """(minor page faults, user + system CPU seconds) of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- a bare pynetdicom Storage SCP, in its own process ---------------------------------------------


def bare_scp(port: int, folder: str, ready: mp.synchronize.Event, stop: mp.synchronize.Event, sealed: bool) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.transport import ThreadedAssociationServer

    from engine.store.blobs import BlobFolder

    class NoDelay(ThreadedAssociationServer):
        def get_request(self):  # type: ignore[no-untyped-def]
            sock, address = self.socket.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, address

    count = 0
    key, blobs = AESGCM(AESGCM.generate_key(256)), BlobFolder(Path(folder))

    def on_store(event: evt.Event) -> int:
        nonlocal count
        count += 1
        if sealed:  # the least any encrypted, durable receiver does: seal, write, fsync file and folder
            nonce = os.urandom(12)
            sealed_bytes = nonce + key.encrypt(nonce, event.request.DataSet.getbuffer(), None)
            blobs.put(f"00000000-0000-7000-8000-{count:012d}", "raw", sealed_bytes)
        else:
            with open(os.path.join(folder, f"{count:06d}.raw"), "wb") as f:
                f.write(event.request.DataSet.getbuffer())
        return 0x0000

    ae = AE(ae_title="BARESCP")
    ae.maximum_pdu_size = MAX_PDU
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.make_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)], server_class=NoDelay)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    ready.set()
    stop.wait()
    socketserver.BaseServer.shutdown(server)  # the AE never listed it (make_server, not start_server)
    server.server_close()


def run_bare(folder: Path, paths: list[Path], *, sealed: bool = False) -> Sent:
    folder.mkdir()
    port = free_port()
    spawn = mp.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    proc = spawn.Process(target=bare_scp, args=(port, str(folder), ready, stop, sealed), daemon=True)
    proc.start()
    try:
        if not ready.wait(START_TIMEOUT_S):
            raise SystemExit("bare SCP did not start")
        return storescu(port, "BARESCP", paths, timeout=60 + len(paths))
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# -- dcmtk storescp and Orthanc ----------------------------------------------------------------------


def _wait_echo(port: int, called_ae: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while subprocess.run(["echoscu", "-to", "2", "-aec", called_ae, "127.0.0.1", str(port)], env=PEER_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode:  # fmt: skip
        if time.monotonic() > deadline:
            raise SystemExit(f"{called_ae} does not answer C-ECHO")
        time.sleep(0.1)


def run_storescp(folder: Path, paths: list[Path]) -> Sent:
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(folder), str(port)], env=PEER_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_echo(port, "STORESCP")
        return storescu(port, "STORESCP", paths, timeout=60 + len(paths))
    finally:
        proc.terminate()
        proc.wait(10)


def run_orthanc(folder: Path, paths: list[Path]) -> Sent | None:
    from tests.orthanc import TEARDOWN_GRACE_S, have_orthanc, start_orthanc

    if not have_orthanc():
        return None
    server = start_orthanc(folder, authentication=False, dicomweb=False)  # sets TCP_NODELAY=1 itself
    try:
        _wait_echo(server.dicom_port, server.aet)
        return storescu(server.dicom_port, server.aet, paths, timeout=60 + len(paths))
    finally:
        server.stop(TEARDOWN_GRACE_S)


# -- report ------------------------------------------------------------------------------------------


def row(name: str, sent: Sent) -> str:
    return (f"  {name:<9} {sent.rate:7.1f} instances/s  {sent.mbps:6.1f} MB/s  ({sent.instances} in "
            f"{sent.seconds:.2f} s; storescu wall {sent.wall:.2f} s; max PDV {sent.pdv})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size-kb", type=int, default=512, help="pixel data per instance (KiB)")
    parser.add_argument("--rss-instances", type=int, default=2000)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-orthanc", action="store_true")
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (dcmtk) is not installed")
    base = REPO / "data"  # the disk the engine uses (git-ignored), as mllp_bench does
    base.mkdir(exist_ok=True)
    # Everything stays until the end: ext4 is slow to create files for ~30 s after many were deleted
    # (it skips recently freed inodes), which would slow whichever receiver came next.
    tmp = Path(tempfile.mkdtemp(prefix="dicom-bench-", dir=base))
    try:
        study = write_study(tmp / "study", args.instances, pixel_bytes=args.size_kb * KB)
        size = study.paths[0].stat().st_size
        print(f"{args.instances} CT instances of {size / KB:.0f} KiB (Part 10), one study, one storescu association "
              f"each; timed from association accepted to release; MB = 2^20 bytes")  # fmt: skip
        engine = run_engine(tmp / "engine", study.paths, scan=True)
        if engine.stored != args.instances:
            raise SystemExit(f"engine stored {engine.stored} of {args.instances} instances")
        if engine.leaks:
            raise SystemExit(f"fake PHI in clear in {len(engine.leaks)} file(s): {sorted(engine.leaks)[:5]}")
        results = {"engine": engine.sent, "bare-scp": run_bare(tmp / "bare", study.paths),
                   "bare-seal": run_bare(tmp / "bare-sealed", study.paths, sealed=True)}  # fmt: skip
        if not args.skip_orthanc:
            orthanc = run_orthanc(tmp / "orthanc", study.paths)
            if orthanc is not None:
                results["orthanc"] = orthanc
        results["storescp"] = run_storescp(tmp / "storescp", study.paths)
        for name, sent in results.items():
            print(row(name, sent))
        per = args.instances
        print(f"  engine: all {engine.stored} instances in its store, no fake PHI in clear in its folder; per instance "
              f"{engine.cpu_s / per * 1e3:.1f} ms CPU, {engine.faults / per:.0f} page faults; peak RSS "
              f"{engine.peak_rss_mb:.0f} MB")  # fmt: skip
        ratios = [
            f"{results['engine'].rate / results['bare-scp'].rate:.0%} of the bare SCP (bar: 80%)",
            f"{results['engine'].rate / results['bare-seal'].rate:.0%} of the sealing one",
        ]
        print(f"  bare-seal: {results['bare-seal'].rate / results['bare-scp'].rate:.0%} of the bare SCP: sealing and "
              "fsyncing alone, with nothing parsed, indexed or audited")  # fmt: skip
        if "orthanc" in results:
            ratios.append(f"{results['engine'].rate / results['orthanc'].rate:.2f}x Orthanc (bar: > 1)")
        print("  engine rate: " + ", ".join(ratios))
        if not args.skip_rss:
            big = write_study(tmp / "big", args.rss_instances, pixel_bytes=args.size_kb * KB)
            run = run_engine(tmp / "engine-rss", big.paths, scan=False)
            if run.stored != args.rss_instances:
                raise SystemExit(f"engine stored {run.stored} of {args.rss_instances} instances")
            print(f"engine, one study of {args.rss_instances} instances: peak RSS (VmHWM) {run.peak_rss_mb:.0f} MB "
                  f"(bar: < 300); {run.sent.rate:.1f} instances/s, {run.sent.mbps:.1f} MB/s; disk use "
                  f"{run.disk_mb:,.0f} MB (database + blobs) for {run.sent.megabytes:,.0f} MB received")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
