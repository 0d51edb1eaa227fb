"""Throughput of the ER7 reader against python-hl7 and hl7apy, and of the ACK builder.

Run: .venv/bin/python benchmarks/er7_bench.py   (target: er7 reader >= 50,000 msgs/s)
Each figure is the best of 5 timed runs after a warm-up; "read" means parse + the 10 fields below.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.hl7v2 import Message, build_ack

# A realistic ~1 KB ORM^O01 (v2.3.1) with obviously fake patient data.
ORM = (
    "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|CTRL000123456|P|2.3.1|||AL|NE\r"
    "PID|1||MRN-FAKE-4471902^^^GENHOSP^MR~SSN-FAKE-000^^^USSSA^SS||FAKEPATIENT^ZELDAQUINN^A^^^^L|"
    "FAKEMOTHER^ANNA|19470228|F||2106-3^White^HL70005|1 FAKE ST^^SPRINGFIELD^ZZ^00000^USA^H||"
    "^PRN^PH^^^555^0199773|^WPN^PH^^^555^0100000|EN^English^HL70296|S||ACCT-FAKE-771^^^GENHOSP^AN\r"
    "PV1|1|O|RAD^XR1^01^GENHOSP^^^^^RADIOLOGY||||1234567^FAKEDOC^HAROLD^J^^^MD|||RAD||||1|||"
    "1234567^FAKEDOC^HAROLD^J^^^MD|OP|VISIT-FAKE-5521|||||||||||||||||||||||||20261121100000\r"
    "ORC|NW|PLC1001^RIS|ACCFAKE88213^PACS||SC||1^^^20261121101500^^R||20261121101500|TECH01^FAKETECH^TINA|"
    "|1234567^FAKEDOC^HAROLD^J^^^MD|RAD^XR1|^WPN^PH^^^555^0100001|20261121101500||GENHOSP^General Hospital\r"
    "OBR|1|PLC1001^RIS|ACCFAKE88213^PACS|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500|||||"
    "|Headache, rule out bleed|||1234567^FAKEDOC^HAROLD^J^^^MD|^WPN^PH^^^555^0100001|ACCFAKE88213|"
    "CT1|||||CT|||1^^^20261121101500^^R||||R51^Headache^I10|||||20261121103000\r"
    "DG1|1|I10|R51^Headache^I10|Headache||W\r"
    "NTE|1|L|Patient reports sudden onset headache; no prior imaging on file.\r"
)

FIELDS = ["MSH-9", "MSH-10", "PID-3.1", "PID-5", "PID-7", "ORC-1", "ORC-2", "OBR-4.1", "OBR-18", "OBR-27.6"]
NOW = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)


def er7_read(data: bytes) -> list[str | None]:
    msg = Message.parse(data)
    return [msg.get(f) for f in FIELDS]


def hl7_read(data: bytes) -> list[str]:
    import hl7

    h = hl7.parse(data.decode("utf-8"))

    def one(seg: str, f: int, c: int | None = None) -> str:
        field = h.segment(seg)[f]
        return h.unescape(str(field[0] if c is None else field[0][c - 1]))

    return [
        one("MSH", 9), one("MSH", 10), one("PID", 3, 1), one("PID", 5), one("PID", 7),
        one("ORC", 1), one("ORC", 2), one("OBR", 4, 1), one("OBR", 18), one("OBR", 27, 6),
    ]  # fmt: skip


def hl7apy_parse(data: bytes) -> object:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    return parse_message(data.decode("utf-8"), validation_level=VALIDATION_LEVEL.TOLERANT)


def rate(fn: Callable[[], object], n: int, runs: int = 5) -> float:
    """Best-of-`runs` messages per second over `n` calls each, after a warm-up."""
    for _ in range(max(10, n // 20)):
        fn()
    best = float("inf")
    gc.collect()
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def report(name: str, per_s: float) -> None:
    print(f"{name}: {per_s:,.0f} msgs/s ({1e6 / per_s:.1f} us/msg)")


def main() -> None:
    data = ORM.encode()
    assert er7_read(data) == hl7_read(data), "readers disagree on the benchmark message"
    msg = Message.parse(data)
    print(f"message: {len(data)} bytes, {len(msg)} segments")
    report("er7 reader", rate(lambda: er7_read(data), 20_000))
    report("python-hl7", rate(lambda: hl7_read(data), 2_000))
    report("hl7apy parse", rate(lambda: hl7apy_parse(data), 30, runs=3))
    report("ack builder", rate(lambda: build_ack(msg, "AA", control_id="ACK1", now=NOW), 20_000))


if __name__ == "__main__":
    main()
