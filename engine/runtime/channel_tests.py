"""`radbridge test`: run channel test cases (tests/channels/*_test.yaml) against the real pipeline.

Each case feeds a sample through the channel's decoder, mapping and queue in a throwaway store
(temporary folder, throwaway keyring), with every destination replaced by a mock that records what
it was sent and answers as the case says. A case file looks like:

    channel: ris-orders
    cases:
      - name: two orders in one message
        input: samples/hl7/orm-o01-two-orders.hl7
        ack: AA                       # AA | AE | AR (what an MLLP sender would get)
        records:                      # expected canonical records, in order (only the keys given)
          - {accession: ACC1, topic: order.accepted}
          - {accession: ACC2}
        message: {"PID-3.1": MRN1}    # or: expected fields of an HL7 output, in the path grammar
        golden: tests/channels/golden/x.json   # or: the exact output
        mocks: {bus: ok}              # per destination label: ok | retry | fail (default ok)
        sent: {bus: 1}                # messages each destination received
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.config import load_project, parse_yaml
from engine.core.component import Delivered, Outbound, Outcome
from engine.core.errors import PermanentError, RetryableError
from engine.hl7v2 import Message
from engine.runtime.context import open_context
from engine.runtime.engine import Engine
from engine.runtime.reprocess import decode
from engine.security import keyring


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="What the case shows.")
    input: str = Field(description="Sample file, relative to the project root.")
    ack: str | None = Field(None, pattern="^(AA|AE|AR)$", description="Expected acknowledgement code.")
    records: list[dict[str, Any]] | None = Field(None, description="Expected records (subset of keys each).")
    message: dict[str, str] | None = Field(None, description="Expected HL7 output fields by path.")
    golden: str | None = Field(None, description="File holding the exact expected output.")
    mocks: dict[str, str] = Field(default_factory=dict, description="Destination label -> ok | retry | fail.")
    sent: dict[str, int] | None = Field(None, description="Destination label -> messages it should receive.")


class CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(description="Name of the channel under test.")
    cases: list[Case] = Field(min_length=1, description="The cases.")


def ack_code(outcome: Outcome) -> str:
    return {"accepted": "AA", "duplicate": "AA", "filtered": "AA", "invalid": "AE"}.get(outcome.status, "AR")


class _Mock:
    def __init__(self, answer: str) -> None:
        self.answer, self.bodies = answer, []  # type: ignore[var-annotated]

    async def send(self, message: Outbound) -> Delivered:
        if self.answer == "retry":
            raise RetryableError("mock: retry")
        if self.answer == "fail":
            raise PermanentError("mock: fail")
        self.bodies.append(message.body)
        return Delivered(detail="mock")

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Failure:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} [line {self.line}]: {self.reason}"


async def run_file(path: Path, root: Path) -> tuple[int, list[Failure]]:
    """Run every case of one file; returns (cases run, failures)."""
    display = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    doc, problems = parse_yaml(path.read_text(encoding="utf-8"), display)
    if problems or doc is None:
        return 0, [Failure(display, d.line, d.message) for d in problems]
    try:
        spec = CaseFile.model_validate(doc.data)
    except ValueError as exc:
        return 0, [Failure(display, 1, f"not a channel test file: {exc.errors()[0]['msg']}")]  # type: ignore[attr-defined]
    failures: list[Failure] = []
    with tempfile.TemporaryDirectory(prefix="radbridge-test-") as scratch:
        for n, case in enumerate(spec.cases):
            line = doc.value_pos(("cases", n))[0]
            failures += [
                Failure(display, line, f"{case.name}: {r}")
                for r in await _run_case(spec.channel, case, root, Path(scratch) / str(n))
            ]
    return len(spec.cases), failures


async def _run_case(channel_name: str, case: Case, root: Path, scratch: Path) -> list[str]:
    project = load_project(root)
    loaded = next((c for c in project.channels if c.config.name == channel_name), None)
    if loaded is None:
        return [f"no channel named {channel_name!r}"]
    # The project as configured, but with a throwaway store and keyring under `scratch`.
    engine_cfg = project.engine.model_copy(
        update={
            "data_dir": str(scratch / "data"),
            "store": project.engine.store.model_copy(
                update={"url": f"sqlite:///{scratch}/data/test.db", "blob_dir": str(scratch / "data" / "blobs")}
            ),
            "keys": project.engine.keys.model_copy(update={"source": "file", "file": str(scratch / "keyring.json")}),
        }
    )
    project = dataclasses.replace(project, engine=engine_cfg)
    keyring.write_file(keyring.generate(dev=False), scratch / "keyring.json")  # throwaway
    ctx = open_context(root, project=project)
    try:
        engine = Engine(ctx)
        running = engine.build(loaded, project)
        mocks = {}
        for worker in running.workers:
            mocks[worker.name] = worker.destination = _Mock(case.mocks.get(worker.name, "ok"))  # type: ignore[assignment]
        sample = root / case.input
        if not sample.is_file():
            return [f"input {case.input} not found"]
        kind = "record" if sample.suffix == ".json" else "hl7v2"
        inbound = decode(kind, sample.read_bytes(), "radbridge-test")
        outcome = await running.channel.ingest(inbound)
        problems = []
        if case.ack and ack_code(outcome) != case.ack:
            why = f" ({outcome.problem.text})" if outcome.problem else ""
            problems.append(f"ack {ack_code(outcome)}{why}, expected {case.ack}")
        output = b""
        if outcome.message_id:
            view = ctx.messages.get(outcome.message_id)
            if view and "transformed" in view.parts:
                output = ctx.messages.read(outcome.message_id, "transformed")
            for worker in running.workers:
                due = worker.queues.head(channel_name, worker.name)
                if due is not None:
                    await worker.attempt(due)
        problems += _compare(case, output, root)
        for label, count in (case.sent or {}).items():
            got = len(mocks[label].bodies) if label in mocks else None
            if got is None:
                problems.append(f"no destination labelled {label!r}")
            elif got != count:
                problems.append(f"destination {label} received {got} message(s), expected {count}")
        return problems
    finally:
        ctx.close()


def _compare(case: Case, output: bytes, root: Path) -> list[str]:
    problems = []
    if case.records is not None:
        records = [json.loads(line) for line in output.splitlines() if line.strip()]
        if len(records) != len(case.records):
            problems.append(f"{len(records)} record(s), expected {len(case.records)}")
        for i, (want, got) in enumerate(zip(case.records, records, strict=False)):
            for key, value in want.items():
                actual = _dotted(got, key)
                if actual != value:
                    problems.append(f"record {i + 1} {key}: got {actual!r}, expected {value!r}")
    if case.message is not None:
        message = Message.parse(output) if output else None
        for path, value in case.message.items():
            actual = message.get(path) if message else None
            if actual != value:
                problems.append(f"{path}: got {actual!r}, expected {value!r}")
    if case.golden is not None:
        expected = (root / case.golden).read_bytes()
        if expected != output:
            problems.append(f"output differs from {case.golden}")
    return problems


def _dotted(record: dict[str, Any], key: str) -> Any:
    """`accession` reads the record's fields; `topic` and `type` the record itself."""
    value: Any = record if key in ("topic", "type") else record.get("fields", {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def case_files(paths: list[Path], root: Path) -> list[Path]:
    found: list[Path] = []
    for path in paths or [root / "tests" / "channels"]:
        found += sorted(path.rglob("*_test.yaml")) if path.is_dir() else [path]
    return found
