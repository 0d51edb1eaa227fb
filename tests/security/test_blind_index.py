import pytest

from engine.security.blind_index import BlindIndex


def test_equal_values_match_and_kinds_are_separated() -> None:
    index = BlindIndex(b"k" * 32)
    assert index("accession", "ACC123") == index("accession", " ACC123 ")
    assert index("accession", "ACC123") != index("mrn", "ACC123")
    assert index("accession", "ACC123") != BlindIndex(b"j" * 32)("accession", "ACC123")
    assert len(index("mrn", "X")) == 64 and "ACC123" not in index("accession", "ACC123")


def test_unknown_kind_and_short_key_rejected() -> None:
    with pytest.raises(ValueError):
        BlindIndex(b"short")
    with pytest.raises(ValueError, match="unknown blind-index kind"):
        BlindIndex(b"k" * 32)("name", "x")
