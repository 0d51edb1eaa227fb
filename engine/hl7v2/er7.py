"""A small, lazy ER7 (pipe-and-hat) reader for the ingest hot path.

`Message.parse` splits the text into segments and checks MSH-1/MSH-2 and the segment ids; a
segment is split into fields only when first read, and a field into repetitions/components only
along the path asked for. Values come back unescaped; None means absent or empty.

Numbering follows HL7: MSH-1 is the field separator itself, MSH-2 the encoding characters, MSH-3 the
first field after them (the same holds for the batch/file headers BHS and FHS).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

from engine.core.errors import PermanentError
from engine.hl7v2.escape import DEFAULT_DELIMITERS, Delimiters, unescape
from engine.hl7v2.path import ALL, Path, parse_path

__all__ = ["Delimiters", "Group", "Hl7ParseError", "Message", "Segment", "codec_for_charset"]

_HEADERS = frozenset(("MSH", "BHS", "FHS"))
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ID_REST = _ID_FIRST | frozenset("0123456789")


class Hl7ParseError(PermanentError):
    """The text is not readable ER7. The message names what and where, never field content.

    `code` is the HL7 table 0357 error code an ACK should carry; `segment`, `sequence` (segment
    position, 1-based) and `field` locate the problem when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 100,
        segment: str | None = None,
        sequence: int | None = None,
        field: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.segment = segment
        self.sequence = sequence
        self.field = field


# --- character sets (MSH-18, HL7 table 0211) ---------------------------------------------------

_CHARSETS = {
    "ASCII": None,  # None: the tolerant default (UTF-8, else latin-1); valid ASCII reads the same
    "ISO IR6": None,
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR100": "iso8859-1",  # DICOM-style names some senders use
    "ISO IR101": "iso8859-2",
    "ISO IR144": "iso8859-5",
    "ISO IR127": "iso8859-6",
    "ISO IR126": "iso8859-7",
    "ISO IR138": "iso8859-8",
    "ISO IR148": "iso8859-9",
    "ISO IR192": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    # "UNICODE" is ambiguous in the table; in a byte stream whose MSH we could read it is UTF-8.
    "UNICODE": "utf-8",
    # Japanese sets are used through ISO 2022 escape sequences.
    "ISO IR14": "iso2022_jp_ext",
    "ISO IR87": "iso2022_jp_ext",
    "ISO IR159": "iso2022_jp_ext",
    "KS X 1001": "euc_kr",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
}


def codec_for_charset(name: str | None) -> str | None:
    """Python codec for an MSH-18 value; None for the tolerant default (absent, ASCII, unknown)."""
    if not name:
        return None
    key = " ".join(name.strip().upper().split())
    if key in _CHARSETS:
        return _CHARSETS[key]
    try:
        info = codecs.lookup(name.strip())  # non-standard but common: "windows-1252", "latin1"
    except LookupError:
        return None
    # A stream we could sniff MSH-18 from is ASCII-compatible: refuse UTF-16/32 claims.
    return None if info.name.startswith(("utf-16", "utf-32")) else info.name


def _sniff_charset(raw: bytes) -> str | None:
    """MSH-18 read straight from the bytes of the first segment (before decoding)."""
    raw = raw.lstrip(b"\x0b\r\n")
    end = len(raw)
    for stop in (b"\r", b"\n"):
        at = raw.find(stop, 0, end)
        if at != -1:
            end = at
    line = raw[:end]
    if line[:3] != b"MSH" or len(line) < 8:
        return None
    fs = line[3:4]
    parts = line.split(fs)
    if len(parts) < 18:
        return None
    reps = [r.strip() for r in parts[17].split(parts[1][1:2] or b"~")]
    names = [r.decode("ascii", "replace") for r in reps if r]
    if not names:
        return None
    # "~ISO IR87": ASCII primary with an ISO 2022 alternate -> decode with the alternate's codec.
    primary = names[0]
    if codec_for_charset(primary) is None:
        for alt in names[1:]:
            if (codec_for_charset(alt) or "").startswith("iso2022"):
                return alt
    return primary


def _decode(raw: bytes) -> tuple[str, str, str | None]:
    """(text, codec used, declared MSH-18)."""
    if raw[:3] == codecs.BOM_UTF8:
        return raw[3:].decode("utf-8", "replace"), "utf-8", None
    if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return raw.decode("utf-16"), "utf-16", None
    declared = _sniff_charset(raw)
    codec = codec_for_charset(declared)
    if codec is not None:
        try:
            return raw.decode(codec), codec, declared
        except UnicodeDecodeError:
            pass  # mislabelled: fall through to the tolerant default
    try:
        return raw.decode("utf-8"), "utf-8", declared
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1", declared  # never fails: every byte is a char


# --- segments ----------------------------------------------------------------------------------


class Segment:
    """One segment; fields are split on first access and cached."""

    __slots__ = ("_codec", "_d", "_fields", "name", "position", "raw")

    def __init__(self, raw: str, position: int, d: Delimiters, codec: str = "utf-8") -> None:
        self.name = raw[:3]
        self.raw = raw
        self.position = position  # 1-based place in the message, for error locations
        self._fields: list[str] | None = None
        self._d = d
        self._codec = codec

    def __repr__(self) -> str:  # never the content: it may be PHI
        return f"<Segment {self.name} #{self.position}>"

    @property
    def fields(self) -> list[str]:
        """Raw (escaped) fields; index n is field n, index 0 the segment id."""
        f = self._fields
        if f is None:
            f = self.raw.split(self._d.field)
            if self.name in _HEADERS:
                f.insert(1, self._d.field)
            self._fields = f
        return f

    def field(self, number: int) -> str:
        """Raw (still escaped) text of field `number`, '' when absent."""
        f = self.fields
        return f[number] if number < len(f) else ""

    def value(
        self, field: int, repetition: int = 1, component: int | None = None, subcomponent: int | None = None
    ) -> str | None:
        """Unescaped value at the given 1-based coordinates; None when absent or empty."""
        f = self._fields
        if f is None:
            f = self.fields
        if not 0 <= field < len(f):
            return None
        v = f[field]
        if not v:
            return None
        d = self._d
        if field <= 2 and self.name in _HEADERS:  # MSH-1/MSH-2 are literal, never split
            return v if repetition == 1 and (component or 1) == 1 and (subcomponent or 1) == 1 else None
        sep = d.repetition
        if sep in v:
            if repetition == 1:
                v = v[: v.index(sep)]
            else:
                reps = v.split(sep)
                v = reps[repetition - 1] if 0 < repetition <= len(reps) else ""
        elif repetition != 1:
            return None
        if component is not None:
            sep = d.component
            if sep in v:
                parts = v.split(sep)
                v = parts[component - 1] if 0 < component <= len(parts) else ""
            elif component != 1:
                return None
            if subcomponent is not None:
                sep = d.subcomponent
                if sep in v:
                    parts = v.split(sep)
                    v = parts[subcomponent - 1] if 0 < subcomponent <= len(parts) else ""
                elif subcomponent != 1:
                    return None
        if not v:
            return None
        if d.escape in v:
            return unescape(v, d, self._codec)
        return v

    def repetition_count(self, field: int) -> int:
        v = self.field(field)
        if not v:
            return 0
        if field <= 2 and self.name in _HEADERS:
            return 1
        return v.count(self._d.repetition) + 1

    def _values(self, p: Path, all_reps: bool) -> list[str]:
        if not all_reps:
            v = self.value(p.field, p.repetition or 1, p.component, p.subcomponent)
            return [] if v is None else [v]
        out = []
        for rep in range(1, self.repetition_count(p.field) + 1):
            v = self.value(p.field, rep, p.component, p.subcomponent)
            if v is not None:
                out.append(v)
        return out

    def get(self, path: str | Path) -> str | None:
        """Value at `path` if its segment id is this segment's, else None."""
        p = parse_path(path) if isinstance(path, str) else path
        if p.segment != self.name:
            return None
        if p.repetition == ALL:
            vals = self._values(p, True)
            return vals[0] if vals else None
        return self.value(p.field, p.repetition or 1, p.component, p.subcomponent)

    def get_all(self, path: str | Path) -> list[str]:
        """Every non-empty value at `path`; repetitions are all read unless the path fixes one."""
        p = parse_path(path) if isinstance(path, str) else path
        if p.segment != self.name:
            return []
        return self._values(p, p.repetition is None or p.repetition == ALL)


def _select(segments: Sequence[Segment], p: Path, first: bool) -> list[str]:
    """Values of `p` over `segments` already filtered to p.segment.

    Open (unwritten) occurrence/repetition means "the first" for get and "every" for get_all;
    `[*]` always means every (get then returns the first non-empty one).
    """
    occ = p.occurrence
    if occ is None:
        chosen: Sequence[Segment] = segments[:1] if first else segments
    elif occ == ALL:
        chosen = segments
    else:
        chosen = segments[occ - 1 : occ]
    all_reps = p.repetition == ALL or (p.repetition is None and not first)
    out: list[str] = []
    for seg in chosen:
        out += seg._values(p, all_reps)
        if first and out:
            break
    return out


class Group(list[Segment]):
    """Segments of one order (or other group): paths resolve within it."""

    def segments(self, name: str) -> list[Segment]:
        return [s for s in self if s.name == name]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self.segments(name)
        return found[occurrence - 1] if 0 < occurrence <= len(found) else None

    def get(self, path: str | Path) -> str | None:
        p = parse_path(path) if isinstance(path, str) else path
        vals = _select(self.segments(p.segment), p, True)
        return vals[0] if vals else None

    def get_all(self, path: str | Path) -> list[str]:
        p = parse_path(path) if isinstance(path, str) else path
        return _select(self.segments(p.segment), p, False)


# --- message -----------------------------------------------------------------------------------


def _delimiters(msh: str) -> Delimiters:
    if len(msh) < 8:
        raise Hl7ParseError(
            f"segment 1 (MSH): too short to hold MSH-1 and MSH-2 ({len(msh)} characters)",
            code=102, segment="MSH", sequence=1, field=2,
        )  # fmt: skip
    fs = msh[3]
    end = msh.find(fs, 4)
    return _encoding(fs, msh[4:] if end == -1 else msh[4:end])


@lru_cache(maxsize=256)  # a feed keeps its delimiters: check them once
def _encoding(fs: str, enc: str) -> Delimiters:
    if fs.isalnum() or not fs.isprintable() or fs.isspace():
        raise Hl7ParseError(
            "MSH-1: the field separator must be a printable, non-alphanumeric character",
            code=102, segment="MSH", sequence=1, field=1,
        )  # fmt: skip
    if len(enc) not in (4, 5):
        raise Hl7ParseError(
            f"MSH-2: expected 4 encoding characters (5 with a truncation character), found {len(enc)}",
            code=102, segment="MSH", sequence=1, field=2,
        )  # fmt: skip
    if any(c.isalnum() or c.isspace() or not c.isprintable() for c in enc):
        raise Hl7ParseError(
            "MSH-2: encoding characters must be printable, non-alphanumeric characters",
            code=102, segment="MSH", sequence=1, field=2,
        )  # fmt: skip
    if len(set(enc + fs)) != len(enc) + 1:
        raise Hl7ParseError(
            "MSH-2: encoding characters must differ from each other and from the field separator",
            code=102, segment="MSH", sequence=1, field=2,
        )  # fmt: skip
    if enc == "^~\\&" and fs == "|":
        return DEFAULT_DELIMITERS
    return Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)


class Message:
    """A parsed ER7 message. Build with `Message.parse`."""

    __slots__ = ("_index", "_segs", "charset", "codec", "encoding", "text")

    def __init__(self, text: str, encoding: Delimiters, segs: list[Segment], codec: str, charset: str | None):
        self.text = text  # normalised: segments joined by CR
        self.encoding = encoding
        self.codec = codec  # the Python codec the bytes were decoded with (hex escapes use it too)
        self.charset = charset  # MSH-18 as declared; None when absent or when a byte-order mark decided
        self._segs = segs
        self._index: dict[str, list[Segment]] = {}
        for s in segs:
            lst = self._index.get(s.name)
            if lst is None:
                self._index[s.name] = [s]
            else:
                lst.append(s)

    def __repr__(self) -> str:
        return f"<Message {self.message_type} {len(self._segs)} segments>"

    @classmethod
    def parse(cls, data: bytes | str) -> Message:
        """Parse ER7. Bytes are decoded per MSH-18 (see `codec_for_charset`); when MSH-18 is absent,
        ASCII or unknown they are read as UTF-8, falling back to latin-1 if that fails."""
        charset = None
        is_text = isinstance(data, str)
        if is_text:
            text, codec = data, "utf-8"
        else:
            text, codec, charset = _decode(bytes(data))
        if text[:1] == "\ufeff":
            text = text[1:]
        if "\n" in text:  # tolerate LF and CRLF segment terminators
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        # Stray terminators and MLLP framing bytes; trailing spaces may be data, leading ones cannot.
        text = text.lstrip("\r\x0b\x1c \t").rstrip("\r\x0b\x1c")
        if not text:
            raise Hl7ParseError("empty message: no segments", code=100)
        raws = text.split("\r")
        if "" in raws:  # blank lines between segments
            raws = [r for r in raws if r]
            text = "\r".join(raws)
        msh = raws[0]
        if msh[:3] != "MSH":
            raise Hl7ParseError(
                "segment 1: a message must start with an MSH segment", code=100, segment="MSH", sequence=1
            )
        d = _delimiters(msh)
        if is_text:  # report the declared charset anyway (bytes: sniffed before decoding)
            charset = _msh18(msh, d)
        fs = d.field
        segs = []
        for position, raw in enumerate(raws, 1):
            name = raw[:3]
            if (
                len(name) != 3
                or name[0] not in _ID_FIRST
                or name[1] not in _ID_REST
                or name[2] not in _ID_REST
                or (len(raw) > 3 and raw[3] != fs)
            ):
                raise Hl7ParseError(
                    f"segment {position}: invalid segment id (expected 3 characters A-Z/0-9 followed by"
                    " the field separator)",
                    code=100, sequence=position,
                )  # fmt: skip
            segs.append(Segment(raw, position, d, codec))
        return cls(text, d, segs, codec, charset)

    # -- navigation

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segs)

    def __len__(self) -> int:
        return len(self._segs)

    def segments(self, name: str) -> list[Segment]:
        return list(self._index.get(name, ()))

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self._index.get(name)
        if not found or not 0 < occurrence <= len(found):
            return None
        return found[occurrence - 1]

    def get(self, path: str | Path) -> str | None:
        """Unescaped value at `path` (first occurrence/repetition unless written); None if absent/empty."""
        p = parse_path(path) if isinstance(path, str) else path
        found = self._index.get(p.segment)
        if found is None:
            return None
        occ = p.occurrence
        if occ != ALL and p.repetition != ALL:  # the hot path: one segment, one repetition
            occ = occ or 1
            if occ > len(found):
                return None
            return found[occ - 1].value(p.field, p.repetition or 1, p.component, p.subcomponent)
        vals = _select(found, p, True)
        return vals[0] if vals else None

    def get_all(self, path: str | Path) -> list[str]:
        """Every non-empty value at `path`: all segment occurrences and all repetitions unless the
        path fixes them with a number."""
        p = parse_path(path) if isinstance(path, str) else path
        found = self._index.get(p.segment)
        return _select(found, p, False) if found else []

    def groups(self, start: str, members: Iterable[str]) -> list[Group]:
        """Split into groups, each opened by a `start` segment (e.g. ORC) and holding the following
        segments whose id is in `members`, up to the next `start`. Segments before the first `start`
        and non-members are left out."""
        wanted = frozenset(members)
        out: list[Group] = []
        current: Group | None = None
        for seg in self._segs:
            if seg.name == start:
                current = Group([seg])
                out.append(current)
            elif current is not None and seg.name in wanted:
                current.append(seg)
        return out

    # -- header shortcuts

    @property
    def msh(self) -> Segment:
        return self._segs[0]

    @property
    def message_type(self) -> str | None:
        """'ORM^O01' from MSH-9.1 and MSH-9.2 (just MSH-9.1 when there is no trigger)."""
        msh = self._segs[0]
        code = msh.value(9, 1, 1)
        if code is None:
            return None
        trigger = msh.value(9, 1, 2)
        return code if trigger is None else f"{code}{self.encoding.component}{trigger}"

    @property
    def message_code(self) -> str | None:
        return self._segs[0].value(9, 1, 1)

    @property
    def trigger_event(self) -> str | None:
        return self._segs[0].value(9, 1, 2)

    @property
    def control_id(self) -> str | None:
        return self._segs[0].value(10)

    @property
    def version(self) -> str | None:
        return self._segs[0].value(12, 1, 1)

    @property
    def processing_id(self) -> str | None:
        return self._segs[0].value(11, 1, 1)

    @property
    def sending_app(self) -> str | None:
        return self._segs[0].value(3, 1, 1)

    @property
    def sending_facility(self) -> str | None:
        return self._segs[0].value(4, 1, 1)

    @property
    def receiving_app(self) -> str | None:
        return self._segs[0].value(5, 1, 1)

    @property
    def receiving_facility(self) -> str | None:
        return self._segs[0].value(6, 1, 1)


def _msh18(msh: str, d: Delimiters) -> str | None:
    parts = msh.split(d.field)
    if len(parts) < 18:
        return None
    first = parts[17].split(d.repetition)[0].strip()
    return first or None
