"""Escape sequences: each kind, the documented pass-through, hex, and escape/unescape round trips."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.hl7v2.escape import DEFAULT_DELIMITERS, Delimiters, escape, unescape

D = DEFAULT_DELIMITERS
ODD = Delimiters("#", "$", "*", "@", "!", "%")


def test_delimiter_escapes() -> None:
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f") == "a|b^c&d~e\\f"
    assert unescape("@F@@S@@T@@R@@E@@P@", ODD) == "#$!*@%"


def test_fast_path_returns_the_same_object() -> None:
    value = "PLAIN VALUE 123"
    assert unescape(value) is value
    assert escape(value) is value


def test_truncation_escape_only_with_a_truncation_character() -> None:
    assert unescape("x\\P\\y", Delimiters(truncation="#")) == "x#y"
    assert unescape("x\\P\\y") == "x\\P\\y"


def test_formatting_and_unknown_escapes_are_left_as_written() -> None:
    for value in ("a\\H\\bold\\N\\", "l1\\.br\\l2", "\\.sp2\\", "\\C2842\\", "\\M244241\\", "\\Zlocal\\", "\\Q\\",
                  "x\\\\y"):  # fmt: skip
        assert unescape(value) == value


def test_unterminated_escape_is_kept() -> None:
    assert unescape("abc\\F") == "abc\\F"
    assert unescape("a\\F\\b\\") == "a|b\\"


def test_hex_escapes() -> None:
    assert unescape("\\X41\\\\X4243\\") == "ABC"
    assert unescape("caf\\XC3A9\\") == "café"
    assert unescape("caf\\XC3\\\\XA9\\!") == "café!"  # joined before decoding
    assert unescape("caf\\XE9\\", codec="iso8859-1") == "café"
    assert unescape("\\XZZ\\ \\X1\\ \\X\\") == "\\XZZ\\ \\X1\\ \\X\\"  # malformed: as written
    assert unescape("bad \\XFF\\ byte") == "bad \\XFF\\ byte"  # undecodable in UTF-8: as written
    assert unescape("\\X0D0A\\") == "\r\n"


def test_escape_builds_valid_text() -> None:
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("line1\rline2\n") == "line1\\X0D\\line2\\X0A\\"
    assert escape("50% #1 $x", ODD) == "50@P@ @F@1 @S@x"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_escape_round_trip(value: str) -> None:
    for d in (D, ODD):
        escaped = escape(value, d)
        assert not any(c in escaped for c in (d.field, d.component, d.repetition, d.subcomponent, "\r", "\n"))
        assert unescape(escaped, d) == value
