"""Record ids: UUIDv7 (RFC 9562) in canonical text form.

Time-ordered, so id order is arrival order and an index on id serves "newest first"; random
enough (74 bits) that ids reveal nothing but a millisecond. Built here because Python 3.11's uuid
module has no uuid7, and it sits on the hot path.
"""

import os
import time


def new_id() -> str:
    """A 36-character UUIDv7, e.g. 019b0f5e-7c1a-7d3e-9f00-0123456789ab."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
