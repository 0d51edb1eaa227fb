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


def test_values_are_plain_hmac_sha256_so_stored_indexes_stay_searchable() -> None:
    import hashlib
    import hmac

    key = b"k" * 32
    index = BlindIndex(key)
    assert index("mrn", " MRN-FAKE-1 ") == hmac.new(key, b"mrn\x00MRN-FAKE-1", "sha256").hexdigest()
    digest = hashlib.sha256(b"payload").digest()
    expected = hmac.new(key, b"content-sha256\x00" + digest, "sha256").hexdigest()
    assert index.content(b"payload") == expected == index.content(b"other", digest.hex())
