"""Record ids: UUIDv7 (RFC 9562) in canonical text form.

Time-ordered, so id order is arrival order and an index on id serves "newest first" and queues
work in message order. Within one millisecond the 12-bit rand_a field is a counter (RFC 9562
section 6.2, method 1), so ids made by one process also sort in the order they were made. Built
here because Python 3.11's uuid module has no uuid7, and it sits on the hot path.
"""

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A 36-character UUIDv7, e.g. 019b0f5e-7c1a-7d3e-9f00-0123456789ab."""
    global _last_ms, _counter
    rand = int.from_bytes(os.urandom(10), "big")
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, (rand >> 64) & 0x7FF  # random start, headroom to count up
        else:  # same millisecond (or the clock stepped back): keep counting from the last id
            ms, _counter = _last_ms, _counter + 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next millisecond
                _last_ms = ms = ms + 1
                _counter = 0
        counter = _counter
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
