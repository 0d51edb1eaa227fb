"""MLLP framing (HL7 v2 Appendix C, Minimal Lower Layer Protocol): <VT> payload <FS><CR>.

`encode` wraps one message; `MllpDecoder` is an incremental decoder for a byte stream that may
split a frame across reads or carry several frames in one read. It is tolerant where senders are
known to be sloppy and strict where tolerance would cost memory or safety:

- CR, LF, space and tab between frames are skipped silently (many senders end a frame with
  <FS><CR><LF>, or send a bare newline as a keep-alive).
- A frame ends at <FS>; the <CR> that should follow is then just inter-frame whitespace, so a
  sender that omits it is still understood and never left waiting.
- Other bytes outside a frame are discarded up to the next <VT> and counted in `garbage`
  (bytes) / `garbage_runs`, so the caller can report it (once per connection is enough).
- A <VT> inside an unfinished frame starts a new frame: the sender gave up on the old one. The
  abandoned bytes are dropped and counted in `restarts`.
- A frame longer than `max_size` bytes raises `FrameTooLarge` before it is buffered, so memory
  stays bounded by max_size plus one read; the decoder is unusable afterwards (close the
  connection: there is no reliable way to find the next frame boundary).

A UTF-8 byte-order mark or LF/CRLF segment separators inside the frame are the ER7 reader's concern
(`Message.parse` tolerates them); the decoder returns the frame's bytes untouched.
"""

from __future__ import annotations

__all__ = ["END_BLOCK", "START_BLOCK", "FrameTooLarge", "MllpDecoder", "encode"]

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c"  # <FS>
TRAILER = b"\x1c\r"  # <FS><CR>
_WHITESPACE = b" \t\r\n"
DEFAULT_MAX_SIZE = 1 << 20


class FrameTooLarge(ValueError):
    """A frame grew past the decoder's max_size without an end block."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"MLLP frame larger than {max_size} bytes")
        self.max_size = max_size


def encode(payload: bytes) -> bytes:
    """One MLLP frame around `payload`. Refuses payloads holding a framing byte (they would split
    or corrupt the frame on the receiving side)."""
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("payload contains an MLLP framing byte (0x0B or 0x1C)")
    return START_BLOCK + payload + TRAILER


class MllpDecoder:
    """Feed it bytes as they arrive; it returns the payloads of the frames completed so far."""

    __slots__ = ("_buf", "_in_frame", "garbage", "garbage_runs", "max_size", "restarts", "started")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self._buf = bytearray()
        self._in_frame = False
        self.garbage = 0  # bytes discarded outside frames (not counting whitespace around them)
        self.garbage_runs = 0  # stretches of such bytes
        self.restarts = 0  # frames abandoned by a new start block
        self.started = 0  # frames begun, for callers timing each frame

    @property
    def in_frame(self) -> bool:
        """True when a frame has begun and its end block has not arrived yet."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished frame held so far."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        pos, n = 0, len(data)
        buf = self._buf
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                stop = n if start == -1 else start
                if stop > pos:
                    junk = len(data[pos:stop].strip(_WHITESPACE))
                    if junk:
                        self.garbage += junk
                        self.garbage_runs += 1
                if start == -1:
                    return frames
                self._in_frame = True
                self.started += 1
                pos = start + 1
            end = data.find(END_BLOCK, pos)
            stop = n if end == -1 else end
            restart = data.rfind(START_BLOCK, pos, stop)
            if restart != -1:  # the sender abandoned the frame and began another
                self.restarts += 1
                self.started += 1
                buf.clear()
                pos = restart + 1
            if len(buf) + (stop - pos) > self.max_size:
                buf.clear()
                raise FrameTooLarge(self.max_size)
            if end == -1:
                buf += data[pos:]
                return frames
            if buf:
                buf += data[pos:end]
                frames.append(bytes(buf))
                buf.clear()
            else:
                frames.append(bytes(data[pos:end]))
            self._in_frame = False
            pos = end + 1
        return frames
