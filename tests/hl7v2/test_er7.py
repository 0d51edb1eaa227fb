"""The lazy ER7 reader: numbering, paths, delimiters, line ends, groups, charsets, errors."""

from __future__ import annotations

import pytest

from engine.core.errors import PermanentError
from engine.hl7v2 import DEFAULT_DELIMITERS, Delimiters, Hl7ParseError, Message, codec_for_charset, parse_path
from tests import phi
from tests.hl7v2 import samples


@pytest.fixture
def orm() -> Message:
    return Message.parse(samples.ORM_O01)


def test_msh_numbering_and_header_properties(orm: Message) -> None:
    assert orm.get("MSH-1") == "|"
    assert orm.get("MSH-2") == "^~\\&"
    assert orm.get("MSH-3") == "RIS"
    assert orm.get("MSH-7") == "20261121101500"
    assert orm.get("MSH-9") == "ORM^O01"
    assert orm.get("MSH-9.2") == "O01"
    assert orm.message_type == "ORM^O01"
    assert (orm.message_code, orm.trigger_event) == ("ORM", "O01")
    assert orm.control_id == "CTRL0001"
    assert orm.version == "2.3.1"
    assert orm.processing_id == "P"
    assert (orm.sending_app, orm.sending_facility) == ("RIS", "GENHOSP")
    assert (orm.receiving_app, orm.receiving_facility) == ("RADBRIDGE", "AIHUB")
    assert orm.encoding == DEFAULT_DELIMITERS
    assert orm.msh.fields[:4] == ["MSH", "|", "^~\\&", "RIS"]


def test_field_component_subcomponent_and_repetitions(orm: Message) -> None:
    assert orm.get("PID-3") == f"{phi.MRN}^^^GENHOSP^MR"  # whole first repetition
    assert orm.get("PID-3.1") == phi.MRN
    assert orm.get("PID-3[1].1") == phi.MRN
    assert orm.get("PID-3[2].1") == "SSN-FAKE-000"
    assert orm.get("PID-3[2].5") == "SS"
    assert orm.get("PID-3[*].1") == phi.MRN
    assert orm.get_all("PID-3.1") == [phi.MRN, "SSN-FAKE-000"]
    assert orm.get_all("PID-3[*].5") == ["MR", "SS"]
    assert orm.get_all("PID-3[2].1") == ["SSN-FAKE-000"]
    assert orm.get("PID-5.2") == phi.NAME_GIVEN
    assert orm.get("ORC-7.4") == "20261121101500"
    assert orm.get("PID-7.1") == phi.DOB  # component 1 of a field without components: the field
    assert orm.get("PID-7.1.1") == phi.DOB


def test_absent_and_empty_are_none(orm: Message) -> None:
    for path in ("ZZZ-1", "PID-99", "PID-2", "PID-3[3].1", "PID-3.20", "PID-7.2", "PID-7.1.2", "OBR[9]-4",
                 "PID-3[2].2", "PID-3.2"):  # fmt: skip
        assert orm.get(path) is None, path
    assert orm.get("PID-3[3]") is None
    assert orm.get_all("ZZZ-1") == []
    assert orm.get_all("PID-2") == []


def test_segment_occurrences(orm: Message) -> None:
    assert orm.get("OBR-18") == phi.ACCESSION  # the first OBR
    assert orm.get("OBR[2]-18") == "ACCFAKE88214"
    assert orm.get("OBR[*]-18") == phi.ACCESSION
    assert orm.get_all("OBR-18") == [phi.ACCESSION, "ACCFAKE88214"]
    assert orm.get_all("OBR[*]-4.1") == ["CTHEAD", "XRCHEST"]
    assert orm.get_all("OBR[2]-4.1") == ["XRCHEST"]
    assert [s.position for s in orm.segments("ORC")] == [4, 7]
    seg = orm.segment("OBR", 2)
    assert seg is not None and seg.get("OBR-4.2") == "XR CHEST 2 VIEWS"
    assert orm.segment("OBR", 3) is None and orm.segment("ZZZ") is None
    assert orm.get(parse_path("OBR[2]-2.1")) == "PLC1002"  # Path objects work too


def test_escapes_are_resolved(orm: Message) -> None:
    assert orm.get("OBR-13") == "Headache & nausea"
    assert orm.get("OBR-4.2") == "CT HEAD W/O CONTRAST"
    msg = Message.parse("MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5\rOBX|1|TX|||a\\F\\b\\S\\c\\R\\d\\E\\e\\.br\\f")
    assert msg.get("OBX-5") == "a|b^c~d\\e\\.br\\f"


def test_groups_split_orders(orm: Message) -> None:
    groups = orm.groups("ORC", {"OBR", "NTE", "TQ1", "IPC"})
    assert len(groups) == 2
    assert [[s.name for s in g] for g in groups] == [["ORC", "OBR", "NTE"], ["ORC", "OBR", "NTE"]]
    assert [g.get("OBR-18") for g in groups] == [phi.ACCESSION, "ACCFAKE88214"]
    assert [g.get("ORC-2.1") for g in groups] == ["PLC1001", "PLC1002"]
    assert groups[1].get_all("NTE-3") == ["second order note"]
    assert groups[0].get("PID-3.1") is None  # PID precedes the first ORC: not in a group
    assert groups[0].segment("OBR") is groups[0][1]
    assert orm.groups("ORC", {"OBR"})[0].segments("NTE") == []  # non-members are left out


def test_omi_with_ipc() -> None:
    msg = Message.parse(samples.OMI_O23.encode())
    assert msg.message_type == "OMI^O23"
    assert msg.get("MSH-9.3") == "OMI_O23"
    assert msg.charset == "UNICODE UTF-8" and msg.codec == "utf-8"
    (group,) = msg.groups("ORC", {"TQ1", "OBR", "IPC"})
    assert group.get("IPC-1") == phi.ACCESSION
    assert group.get("IPC-3") == "1.2.826.0.1.3680043.10.1234.1"
    assert group.get("TQ1-9.1") == "S"


def test_z_segments_and_subcomponents() -> None:
    msg = Message.parse(samples.ADT_A08)
    assert msg.get("ZPI-2.2") == "VALUE&SUB1&SUB2"
    assert msg.get("ZPI-2.2.3") == "SUB2"
    assert msg.get("PID-13[2].4") == "fake@example.invalid"


NONSTANDARD = "MSH#$*@!#RIS#GENHOSP#RB#HUB#20261121##ORM$O01#C9#P#2.3\rPID#1##A1$$$H$MR*B2$$$H$XX##N@S@AME$GIVEN!X\r"


def test_nonstandard_delimiters() -> None:
    msg = Message.parse(NONSTANDARD)
    assert msg.encoding == Delimiters("#", "$", "*", "@", "!")
    assert msg.get("MSH-1") == "#" and msg.get("MSH-2") == "$*@!"
    assert msg.message_type == "ORM$O01"  # joined with the message's own component separator
    assert msg.get_all("PID-3.1") == ["A1", "B2"]
    assert msg.get("PID-5.1") == "N$AME"  # @S@ is the escaped component separator
    assert msg.get("PID-5.2.1") == "GIVEN" and msg.get("PID-5.2.2") == "X"


def test_truncation_character_v27() -> None:
    msg = Message.parse("MSH|^~\\&#|A|B|C|D|||ADT^A08|1|P|2.7\rPID|1||ID1||LONGNAM#^GIVEN||x\\P\\y")
    assert msg.encoding.truncation == "#"
    assert msg.get("MSH-2") == "^~\\&#"
    assert msg.get("PID-5.1") == "LONGNAM#"  # the marker stays: the value was truncated
    assert msg.get("PID-7") == "x#y"


@pytest.mark.parametrize(
    "text",
    [
        samples.ORM_O01.replace("\r", "\n"),
        samples.ORM_O01.replace("\r", "\r\n"),
        "\ufeff" + samples.ORM_O01,
        "\x0b" + samples.ORM_O01 + "\x1c\r",
        samples.ORM_O01.replace("\r", "\r\r"),
        samples.ORM_O01.rstrip("\r"),
    ],
    ids=["lf", "crlf", "bom", "mllp-frame", "blank-lines", "no-final-cr"],
)
def test_line_ends_bom_and_framing(text: str) -> None:
    for data in (text, text.encode("utf-8")):
        msg = Message.parse(data)
        assert [s.name for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "ORC", "OBR", "NTE"]
        assert msg.get("OBR[2]-18") == "ACCFAKE88214"
        assert msg.get("NTE[2]-3") == "second order note"
        assert msg.text == samples.ORM_O01.rstrip("\r")


def test_utf8_bom_bytes() -> None:
    msg = Message.parse(b"\xef\xbb\xbf" + samples.ORM_O01.encode())
    assert msg.codec == "utf-8" and msg.get("PID-5.1") == phi.NAME_FAMILY


# --- character sets ----------------------------------------------------------------------------


def _with_charset(charset: str, name: str) -> str:
    return f"MSH|^~\\&|A|B|C|D|20261121||ADT^A08|1|P|2.5||||||{charset}\rPID|1||ID1||{name}^GIVEN||19470228|F\r"


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("8859/1", "iso8859-1", "MÜLLER"),
        ("ISO IR100", "iso8859-1", "MÜLLER"),
        ("8859/2", "iso8859-2", "ŁUKASZ"),
        ("8859/5", "iso8859-5", "ИВАНОВ"),
        ("8859/7", "iso8859-7", "ΠΑΠΑΣ"),
        ("8859/15", "iso8859-15", "€URO"),
        ("UNICODE UTF-8", "utf-8", "MÜLLER漢"),
        ("ISO IR192", "utf-8", "MÜLLER漢"),
    ],
)
def test_msh18_decodes_bytes(charset: str, codec: str, name: str) -> None:
    msg = Message.parse(_with_charset(charset, name).encode(codec))
    assert msg.charset == charset and msg.codec == codec
    assert msg.get("PID-5.1") == name


def test_default_charset_is_utf8_then_latin1() -> None:
    utf8 = Message.parse(_with_charset("", "MÜLLER").encode("utf-8"))
    assert utf8.codec == "utf-8" and utf8.get("PID-5.1") == "MÜLLER"
    latin = Message.parse(_with_charset("", "MÜLLER").encode("latin-1"))
    assert latin.codec == "latin-1" and latin.get("PID-5.1") == "MÜLLER"
    mislabelled = Message.parse(_with_charset("UNICODE UTF-8", "MÜLLER").encode("latin-1"))
    assert mislabelled.codec == "latin-1" and mislabelled.get("PID-5.1") == "MÜLLER"
    ascii_declared = Message.parse(_with_charset("ASCII", "MÜLLER").encode("utf-8"))
    assert ascii_declared.codec == "utf-8" and ascii_declared.charset == "ASCII"


def test_iso2022_alternate_charset() -> None:
    text = "MSH|^~\\&|A|B|C|D|20261121||ADT^A08|1|P|2.5||||||~ISO IR87\rPID|1||ID1||山田^太郎\r"
    msg = Message.parse(text.encode("iso2022_jp"))
    assert msg.get("PID-5.1") == "山田" and msg.codec.startswith("iso2022")


def test_hex_escapes_use_the_message_charset() -> None:
    utf8 = Message.parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\rPID|1||ID1||M\\XC39C\\LLER^J\\XC3\\\\XA9\\")
    assert utf8.get("PID-5.1") == "MÜLLER"
    assert utf8.get("PID-5.2") == "Jé"  # a character split over two hex escapes
    latin = Message.parse(_with_charset("8859/1", "M\\XDC\\LLER").encode("latin-1"))
    assert latin.get("PID-5.1") == "MÜLLER"


@pytest.mark.parametrize(
    ("name", "codec"),
    [("ASCII", None), (None, None), ("", None), ("utf-8", "utf-8"), (" unicode  utf-8 ", "utf-8"),
     ("8859/9", "iso8859-9"), ("KS X 1001", "euc_kr"), ("GB 18030-2000", "gb18030"), ("BIG-5", "big5"),
     ("windows-1252", "cp1252"), ("NO SUCH SET", None), ("UNICODE UTF-16", None)],
)  # fmt: skip
def test_codec_for_charset(name: str | None, codec: str | None) -> None:
    assert codec_for_charset(name) == codec


# --- malformed input ---------------------------------------------------------------------------

BODY = f"PID|1||{phi.MRN}||{phi.NAME_FAMILY}^{phi.NAME_GIVEN}||{phi.DOB}||||||{phi.PHONE}\r"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("", "empty message"),
        (b"\r\n\r\n", "empty message"),
        (BODY, "must start with an MSH"),
        (f"{phi.NAME_FAMILY}|^~\\&|\r" + BODY, "must start with an MSH"),
        ("MSH|^~\\", "too short"),
        (f"MSH|^~\\|{phi.MRN}|\r" + BODY, "expected 4 encoding characters"),
        (f"MSH|^~\\&$%|{phi.MRN}|\r" + BODY, "found 6"),
        (f"MSH|^^\\&|{phi.MRN}|\r" + BODY, "must differ"),
        (f"MSH|^~|&|{phi.MRN}|\r" + BODY, "encoding characters"),
        (f"MSH|^~\\||{phi.MRN}|\r" + BODY, "encoding characters"),
        (f"MSHA^~\\&A{phi.MRN}\r" + BODY, "MSH-1"),
        (f"MSH|^~A&|{phi.MRN}|\r" + BODY, "non-alphanumeric"),
        (f"MSH|^~\\&|{phi.MRN}|\r{phi.NAME_FAMILY}|x\r", "segment 2: invalid segment id"),
        (f"MSH|^~\\&|{phi.MRN}|\r" + BODY + "pid|x\r", "segment 3: invalid segment id"),
        (f"MSH|^~\\&|{phi.MRN}|\r" + BODY + "PI\r", "segment 3: invalid segment id"),
        (f"MSH|^~\\&|{phi.MRN}|\r" + BODY + f"PIDX{phi.DOB}\r", "segment 3: invalid segment id"),
    ],
)
def test_malformed_input_names_the_problem_without_phi(data: str | bytes, fragment: str) -> None:
    with pytest.raises(Hl7ParseError) as info:
        Message.parse(data)
    text = str(info.value)
    assert fragment in text
    assert not [s for s in phi.STRINGS if s in text or s.lower() in text.lower()]
    assert isinstance(info.value, PermanentError)
    assert info.value.code in (100, 102)


def test_reprs_carry_no_content(orm: Message) -> None:
    shown = repr(orm) + repr(orm.segment("PID")) + repr(orm.groups("ORC", {"OBR"}))
    assert not phi.leaks_in_bytes(shown.encode())


def test_segment_raw_fields_and_foreign_paths(orm: Message) -> None:
    pid = orm.segment("PID")
    assert pid is not None
    assert pid.field(5) == f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}^A"
    assert pid.field(99) == ""
    assert pid.get("PV1-2") is None and pid.get_all("PV1-2") == []
    assert pid.get_all("PID-3[*].1") == [phi.MRN, "SSN-FAKE-000"]
    assert pid.value(3, 2, 1) == "SSN-FAKE-000"


ORU = (
    "MSH|^~\\&|AI|HUB|RIS|GENHOSP|20261121||ORU^R01|C5|P|2.5.1\r"
    "OBR|1||ACC1\r"
    "OBX|1|TX|FINDING||\r"
    "OBX|2|TX|FINDING||no acute bleed~no mass effect\r"
    "OBX|3|CWE|IMPRESSION||normal^Normal^L\r"
)


def test_open_occurrences_skip_empty_values() -> None:
    msg = Message.parse(ORU)
    assert msg.get("OBX-5") is None  # the first OBX, whose OBX-5 is empty
    assert msg.get("OBX[*]-5") == "no acute bleed"  # the first non-empty one
    assert msg.get("OBX[3]-5.2") == "Normal"
    assert msg.get_all("OBX-5") == ["no acute bleed", "no mass effect", "normal^Normal^L"]
    assert msg.get_all("OBX[*]-5[1]") == ["no acute bleed", "normal^Normal^L"]
    assert msg.get_all("OBX[2]-5[*]") == ["no acute bleed", "no mass effect"]
    assert msg.get_all("OBX-3") == ["FINDING", "FINDING", "IMPRESSION"]


def test_out_of_range_coordinates_are_none() -> None:
    obx = Message.parse(ORU).segment("OBX", 2)
    assert obx is not None
    assert obx.value(5, 0) is None and obx.value(5, 1, 0) is None and obx.value(-1) is None
    assert obx.value(5, 3) is None and obx.repetition_count(5) == 2 and obx.repetition_count(9) == 0


def test_shared_phi_sample_parses() -> None:
    msg = Message.parse(phi.ORM.encode())
    assert msg.get("OBR-18") == phi.ACCESSION and msg.get("PID-3.1") == phi.MRN
    assert msg.get("ORC-7.6") == "S" and msg.get("OBR-27.6") == "S"
