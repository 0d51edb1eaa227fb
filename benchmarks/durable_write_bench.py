"""The floor under the DICOM ingest bar: what durably storing one instance costs on this disk, before
any parsing, encryption or Python around it.

Per 512 KiB instance, in the project's folder (same file system as the store): the blob as the engine
writes it (temp file, write, fsync, rename, fsync of the folder), a small row committed to SQLite in WAL
mode with synchronous=FULL (the message, key, content and audit rows are about that size), and both
in sequence — which is what every C-STORE must wait for before the engine may answer Success.

    .venv/bin/python benchmarks/durable_write_bench.py [--n 150]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 525_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=150)
    n = parser.parse_args().n
    folder = Path(tempfile.mkdtemp(prefix="durable-", dir=REPO))
    data = os.urandom(SIZE)
    db = sqlite3.connect(folder / "store.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v BLOB)")

    def commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (str(uuid.uuid4()), b"x" * 1500))
        db.execute("COMMIT")

    def blob() -> None:
        target = folder / str(uuid.uuid4())
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, target)
        dir_fd = os.open(folder, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)

    def timed(name: str, step: Callable[[], None]) -> None:
        os.sync()
        time.sleep(0.5)
        started = time.perf_counter()
        for _ in range(n):
            step()
        ms = (time.perf_counter() - started) / n * 1000
        print(f"  {name:<28} {ms:6.3f} ms per instance")

    try:
        print(f"durable writes of one {SIZE // 1024} KiB instance, {n} times each:")
        timed("SQLite commit (WAL, FULL)", commit)
        timed("blob (write, fsync x2)", blob)
        timed("blob then commit", lambda: (blob(), commit()))
    finally:
        db.close()
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
