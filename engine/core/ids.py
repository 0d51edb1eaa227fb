"""Time-sortable identifiers (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Written here rather than taken from a package because it is a few lines and sits on the hot path.
"""

import base64
import os
import time

# RFC 4648 base32 alphabet -> Crockford's, which sorts in the same order as the bytes.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def new_id() -> str:
    """A 26-character id that sorts by creation time and carries no meaning beyond it."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    # 4 zero bytes + 16 bytes = 160 bits = 32 digits; the last 26 are 2 zero bits then the 128 bits.
    return base64.b32encode(b"\0\0\0\0" + raw)[6:].translate(_CROCKFORD).decode()
