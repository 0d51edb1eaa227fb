"""Start real engine processes and real peers on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from engine.security import keyring

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(root: Path, channels: dict[str, str], api_port: int | None = None) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "channels").mkdir()
    shutil.copytree(REPO / "mappings", root / "mappings")
    (root / "config" / "engine.yaml").write_text(
        textwrap.dedent(f"""\
        node: {{id: e2e}}
        keys: {{source: file, file: keys/keyring.json, allow_dev_key: false}}
        listeners: [{{name: api, host: 127.0.0.1, port: {api_port or free_port()}}}]
        """)
    )
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    for name, text in channels.items():
        (root / "channels" / name).write_text(textwrap.dedent(text))
    return root


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(prefix):
            return lines
    proc.kill()
    raise AssertionError(f"process did not print {prefix!r}: {lines}")


def start_engine(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    _wait_line(proc, "ready", 60)
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def start_downstream(port: int, log: Path, messages: Path | None = None) -> subprocess.Popen[str]:
    """python-hl7's MLLP server ACKing AA; MSH-10s logged to `log`, whole messages to `messages`."""
    extra = [str(messages)] if messages else []
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("downstream.py")), str(port), str(log), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_line(proc, "ready", 30)
    return proc


def received(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def orm(control_id: str, accession: str, *, orders: int = 1, control: str = "NW", placer: str | None = None) -> bytes:
    """A realistic fake ORM^O01 (v2.3.1) with `orders` ORC/OBR groups (ORC-1 `control`: NW new, CA cancel)."""
    segments = [
        f"MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|{control_id}|P|2.3.1",
        "PID|1||MRN-FAKE-4471902^^^GENHOSP^MR||FAKEPATIENT^ZELDAQUINN^A||19470312|F",
        "PV1|1|O|RAD^^^GENHOSP",
    ]
    for n in range(orders):
        acc = f"{accession}-{n}" if orders > 1 else accession
        segments += [
            f"ORC|{control}|{placer or f'PLC{n}{control_id}'}|{acc}||SC||^^^20261121101500^^R",
            f"OBR|{n + 1}|{placer or f'PLC{n}{control_id}'}|{acc}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500"
            f"|||||||||||{acc}||||||CT",
        ]
    return ("\r".join(segments) + "\r").encode()
