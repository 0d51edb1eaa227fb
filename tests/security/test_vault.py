import pytest

from engine.core.errors import IntegrityError, KeyMaterialError
from engine.security import keyring
from engine.security.vault import AuditSealer, Vault, WrappedKey


@pytest.fixture
def vault() -> Vault:
    return Vault(keyring.generate(dev=False))


def test_round_trip_with_fresh_key_and_nonce_each_time(vault: Vault) -> None:
    a, b = vault.new_data_key("rec-1"), vault.new_data_key("rec-2")
    assert a.key != b.key and len(a.key) == 32
    one, two = vault.seal(a, "raw", b"payload"), vault.seal(a, "raw", b"payload")
    assert one != two  # fresh 96-bit nonce per seal
    assert one[0] == 1 and len(one) == 1 + 12 + len(b"payload") + 16
    assert b"payload" not in one
    assert vault.open(vault.unwrap(a.wrapped, "rec-1"), "raw", one) == b"payload"


def test_tampered_ciphertext_is_rejected(vault: Vault) -> None:
    key = vault.new_data_key("rec-1")
    sealed = bytearray(vault.seal(key, "raw", b"payload"))
    sealed[-1] ^= 1
    with pytest.raises(IntegrityError, match="rec-1 raw: ciphertext failed authentication"):
        vault.open(key, "raw", bytes(sealed))


def test_ciphertext_moved_to_another_record_or_part_fails(vault: Vault) -> None:
    key = vault.new_data_key("rec-1")
    sealed = vault.seal(key, "raw", b"payload")
    with pytest.raises(IntegrityError):
        vault.open(key, "transformed", sealed)  # wrong part kind
    # Even with the right key bytes, a different record id in the associated data fails.
    other = type(key)("rec-2", key.key, key.wrapped)
    with pytest.raises(IntegrityError):
        vault.open(other, "raw", sealed)


def test_unknown_format_version_is_rejected(vault: Vault) -> None:
    key = vault.new_data_key("rec-1")
    sealed = vault.seal(key, "raw", b"payload")
    with pytest.raises(IntegrityError, match="unknown ciphertext format"):
        vault.open(key, "raw", b"\x02" + sealed[1:])


def test_wrapped_key_bound_to_record_and_kek(vault: Vault) -> None:
    key = vault.new_data_key("rec-1")
    with pytest.raises(IntegrityError, match="failed to unwrap"):
        vault.unwrap(key.wrapped, "rec-2")
    stranger = Vault(keyring.generate(dev=False))
    with pytest.raises(IntegrityError, match="failed to unwrap"):
        stranger.unwrap(key.wrapped, "rec-1")  # same KEK id 'local', different key material
    renamed = WrappedKey("other-kek", key.wrapped.kek_version, key.wrapped.wrapped)
    with pytest.raises(IntegrityError, match="unknown KEK other-kek"):
        vault.unwrap(renamed, "rec-1")


def test_rewrap_under_new_kek_version_keeps_content_readable(vault: Vault) -> None:
    key = vault.new_data_key("rec-1")
    sealed = vault.seal(key, "raw", b"payload")
    vault.keyring.kek_versions[2] = keyring.KekVersion(b"\x07" * 32, "2026-01-01T00:00:00+00:00")
    vault.keyring.kek_active = 2
    rewrapped = vault.rewrap(key.wrapped, "rec-1")
    assert rewrapped.kek_version == 2
    vault.keyring.kek_versions[1].retired = True
    assert vault.open(vault.unwrap(rewrapped, "rec-1"), "raw", sealed) == b"payload"
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        vault.unwrap(key.wrapped, "rec-1")


def test_audit_sealer_binds_entry_id() -> None:
    sealer = AuditSealer(keyring.generate(dev=False))
    sealed = sealer.seal("entry-1", b"detail")
    assert sealer.open("entry-1", sealed) == b"detail"
    with pytest.raises(IntegrityError):
        sealer.open("entry-2", sealed)
