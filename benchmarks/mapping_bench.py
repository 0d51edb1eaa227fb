"""Cost of the mapping step as the runtime pays it: `apply` + `to_json` of every record.

Run: .venv/bin/python benchmarks/mapping_bench.py   (target: orm-to-order <= 20 us/msg)
Each run maps freshly parsed messages (parsing is not timed, but the lazy field splitting that
`apply` triggers is, as in the runtime); the figure is the best of 5 runs of 5,000 after a warm-up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.hl7v2 import Message  # noqa: E402
from engine.mapping import load_mapping  # noqa: E402

TZ = ZoneInfo("Europe/Berlin")
CASES = [
    ("orm-to-order", "orm-o01-ct-head.hl7"),
    ("omi-to-order", "omi-o23-mr-knee.hl7"),
    ("adt-to-patient", "adt-a08.hl7"),
]


def per_message(mapping_name: str, sample: str, n: int = 5_000, batch: int = 100, runs: int = 5) -> float:
    """Best-of-`runs` seconds per message for apply + to_json over `n` fresh messages, parsed
    `batch` at a time just before they are mapped (as the runtime maps what it just parsed)."""
    compiled = load_mapping(ROOT / "mappings" / f"{mapping_name}.yaml", ROOT)
    data = (ROOT / "samples" / "hl7" / sample).read_bytes()

    def run() -> float:
        elapsed = 0.0
        for _ in range(n // batch):
            messages = [Message.parse(data) for _ in range(batch)]
            start = time.perf_counter()
            for message in messages:
                b"".join(r.to_json() + b"\n" for r in compiled.apply(message, site_tz=TZ))
            elapsed += time.perf_counter() - start
        return elapsed

    run()  # warm-up
    return min(run() for _ in range(runs)) / n


def main() -> None:
    for mapping_name, sample in CASES:
        t = per_message(mapping_name, sample)
        print(f"{mapping_name} apply+to_json: {t * 1e6:.1f} us/msg ({1 / t:,.0f} msgs/s)")


if __name__ == "__main__":
    main()
