"""What travels over the wire: a guard on received PDUs (size and memory caps), a structural check
that a received dataset is whole, TCP_NODELAY, and raw C-STORE of a dataset exactly as stored.

Nothing here decodes a value: element headers are read and values skipped, so instances in any
transfer syntax, compressed or not, pass through as they are.
"""

from __future__ import annotations

import queue
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # A-ABORT-RQ, service-user, no reason given
_OTHER_PDU_LIMIT = 1 << 20  # association requests with many presentation contexts stay far below this


def nodelay(sock: socket.socket | None) -> None:
    """Turn Nagle's algorithm off (TLS sockets too: they are sockets)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class PduGuard:
    """Replaces an AssociationSocket's recv (called in the DUL thread as recv(6) for a PDU header,
    then recv(length) for its body). Reads each PDU itself; a PDU longer than max_pdu (64 bytes of
    headers allowed) is refused before its body is read, and the dataset fragments (PDVs) of the
    message under way are counted. Over either cap it sends the peer an A-ABORT and hands the DUL a
    synthetic A-ABORT, so pynetdicom ends the association its ordinary way; `on_exceeded(reason,
    bytes)` is told first. Nothing of the oversize message ever reaches the DIMSE layer."""

    recv: Callable[[int], bytearray]  # the original bound AssociationSocket.recv
    sock: socket.socket
    max_pdu: int
    max_instance: int
    on_exceeded: Callable[[str, int], None]
    partial: int = 0  # dataset bytes of the message being received
    tripped: bool = False
    _queued: bytearray | None = field(default=None, repr=False)

    def __call__(self, nr_bytes: int) -> bytearray:
        if self._queued is not None:
            data, self._queued = self._queued, None
            return data
        if self.tripped:
            return bytearray()
        header = self.recv(nr_bytes)
        if nr_bytes != 6 or len(header) != 6:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header)
        limit = self.max_pdu + 64 if pdu_type == 0x04 else _OTHER_PDU_LIMIT
        if length > limit:
            return self._abort(f"PDU of {length} bytes over the limit", length)
        body = self._read(length)
        if pdu_type == 0x04 and len(body) == length and not self._count(body):
            return self._abort(f"instance over {self.max_instance} bytes", self.partial)
        self._queued = body
        return header

    def _read(self, length: int) -> bytearray:
        """The PDU body in as few recv calls as the socket allows (pynetdicom's recv takes 4 KB per call:
        ~130 calls, each a GIL handover, per 512 KB instance); short only when the peer hung up."""
        body = bytearray(length)
        view, got = memoryview(body), 0
        with view:
            while got < length:
                n = self.sock.recv_into(view[got:])
                if not n:
                    break
                got += n
        if got < length:
            del body[got:]
        return body

    def _count(self, body: bytearray) -> bool:
        """Add the PDU's dataset fragments; False once the message under way is over the cap."""
        pos = 0
        while pos + 6 <= len(body):
            item_length = struct.unpack_from(">L", body, pos)[0]
            control = body[pos + 5]
            if not control & 0x01:  # a dataset fragment (bit 0 set: a command fragment)
                self.partial += max(item_length - 2, 0)
                if self.partial > self.max_instance:
                    return False
                if control & 0x02:  # the dataset's last fragment
                    self.partial = 0
            pos += 4 + item_length
        return True

    def _abort(self, reason: str, size: int) -> bytearray:
        self.tripped = True
        try:
            self.sock.sendall(ABORT_PDU)
        except OSError:
            pass  # the peer is gone already; the DUL still gets its abort below
        self.on_exceeded(reason, size)
        self._queued = bytearray(ABORT_PDU[6:])
        return bytearray(ABORT_PDU[:6])


# -- is what arrived whole? ----------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Broken(Exception):
    pass


class _Walk:
    """Walks element headers, skipping values; undefined lengths are followed item by item."""

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.data, self.implicit, self.order = data, implicit, "<" if little else ">"

    def _tag_length(self, pos: int) -> tuple[int, int]:
        if pos + 8 > len(self.data):
            raise _Broken("truncated")
        group, element, length = struct.unpack_from(self.order + "HHL", self.data, pos)
        return group << 16 | element, length

    def elements(self, pos: int, until: int | None = None) -> int:
        data = self.data
        while pos < len(data):
            tag, length = self._tag_length(pos)
            if tag >> 16 == 0xFFFE:
                if tag == until:
                    return pos + 8
                raise _Broken("malformed")
            header = 8
            if not self.implicit:
                if bytes(data[pos + 4 : pos + 6]) in _LONG_VRS:
                    if pos + 12 > len(data):
                        raise _Broken("truncated")
                    length, header = struct.unpack_from(self.order + "L", data, pos + 8)[0], 12
                else:
                    length = struct.unpack_from(self.order + "H", data, pos + 6)[0]
            pos = self.items(pos + header) if length == _UNDEFINED else pos + header + length
            if pos > len(data):
                raise _Broken("truncated")
        if until is not None:
            raise _Broken("truncated")
        return pos

    def items(self, pos: int) -> int:
        while True:
            tag, length = self._tag_length(pos)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Broken("malformed")
            pos = self.elements(pos, _ITEM_END) if length == _UNDEFINED else pos + length


def dataset_problem(dataset: bytes | memoryview, transfer_syntax: UID, max_bytes: int) -> str | None:
    """'truncated', 'malformed' or 'oversize' when the dataset's elements do not add up to its bytes
    (deflated ones are inflated first, up to max_bytes); None when it is whole."""
    try:
        if transfer_syntax.is_deflated:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            dataset = inflater.decompress(dataset, max_bytes)
            if not inflater.eof:
                return "oversize" if inflater.unconsumed_tail else "truncated"
        _Walk(dataset, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian).elements(0)
    except _Broken as exc:
        return str(exc)
    except (zlib.error, RecursionError):
        return "malformed"
    return None


# -- sending -------------------------------------------------------------------------------------


def split_part10(data: bytes) -> tuple[str, str, UID, int]:
    """(SOP class, SOP instance, transfer syntax, offset of the dataset) of Part 10 bytes, from the
    file meta alone (pynetdicom's dsutils.split_dataset, for bytes). ValueError when not Part 10."""
    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag.group != 2)  # fmt: skip
        keywords = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        values = [meta.get(keyword) for keyword in keywords]
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a DICOM Part 10 instance ({type(exc).__name__})") from None
    if not all(values):
        raise ValueError("file meta lacks the SOP class, SOP instance or transfer syntax (0002,0002/0003/0010)")
    return str(values[0]), str(values[1]), UID(str(values[2])), fp.tell()


def c_store_raw(
    assoc: Association, context_id: int, sop_class: str, sop_instance: str, dataset: bytes, message_id: int
) -> int | None:
    """C-STORE a dataset as encoded bytes; the response's status, or None when no valid response came
    within dimse_timeout or the association ended first.

    Association.send_c_store takes a pydicom Dataset (re-encoded) or a file path (a file on disk),
    neither of which keeps bytes as stored without a plaintext temp file, so this builds the C-STORE
    request itself and follows send_c_store's own steps: pause the association's reactor so it does
    not take the response off the DIMSE queue, send, wait (dimse_timeout), resume."""
    request = C_STORE()
    request.MessageID = message_id
    request.Priority = 2
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.DataSet = BytesIO(dataset)
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        # send_c_store waits dimse_timeout even when the peer aborts or hangs up; poll, so we do not
        deadline = time.monotonic() + (assoc.dimse_timeout or 0)
        while True:
            try:
                response = assoc.dimse.msg_queue.get(timeout=0.02)[1]
                status = getattr(response, "Status", None)
                return None if not isinstance(response, C_STORE) or status is None else int(status)
            except queue.Empty:
                if assoc.acse.is_aborted() or not assoc.dul.is_alive() or time.monotonic() > deadline:
                    return None
    finally:
        assoc._reactor_checkpoint.set()
