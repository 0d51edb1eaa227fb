import logging
import os
import stat
from pathlib import Path

import pytest

from engine.core.errors import IntegrityError, KeyMaterialError
from engine.security import keyring
from engine.security.kms import Kek, LocalKek, VaultTransitKek, open_kek
from engine.security.vault import Vault
from tests.security.transit_stub import TOKEN, TransitStub

# -- LocalKek ----------------------------------------------------------------------------------


def _file_keyring(tmp_path: Path) -> tuple[keyring.Keyring, Path]:
    path = tmp_path / "keys" / "keyring.json"
    ring = keyring.generate(dev=False)
    keyring.write_file(ring, path)
    return ring, path


def test_local_kek_rotate_saves_keyring_file_0600_and_keeps_old_versions_readable(tmp_path: Path) -> None:
    ring, path = _file_keyring(tmp_path)
    kek = LocalKek(ring)
    assert isinstance(kek, Kek) and kek.path == path
    vault = Vault(ring, kek)
    old = vault.new_data_key("rec-1")
    assert kek.rotate() == 2 and kek.active == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = keyring.read_file(path)
    assert saved.kek_active == 2 and len(saved.kek_versions[2].key) == 32
    assert saved.kek_versions[2].key != saved.kek_versions[1].key
    assert not (path.parent / "keyring.json.tmp").exists()
    assert vault.unwrap(old.wrapped, "rec-1").key == old.key
    new = vault.new_data_key("rec-2")
    assert new.wrapped.kek_version == 2
    versions = kek.versions()
    assert versions[1] == {"created_at": ring.kek_versions[1].created_at, "retired": False, "active": False}
    assert versions[2]["active"] is True


def test_local_kek_retire_refuses_unwrap_and_persists(tmp_path: Path) -> None:
    ring, path = _file_keyring(tmp_path)
    kek = LocalKek(ring)
    vault = Vault(ring, kek)
    old = vault.new_data_key("rec-1")
    with pytest.raises(KeyMaterialError, match="version 1 is active"):
        kek.retire(1)
    kek.rotate()
    kek.retire(1)
    assert keyring.read_file(path).kek_versions[1].retired
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        vault.unwrap(old.wrapped, "rec-1")
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        vault.wrap(old.key, "rec-1", kek_version=1)
    with pytest.raises(KeyMaterialError, match="version 9 is not in the keyring"):
        kek.retire(9)


def test_local_kek_from_env_cannot_rotate(tmp_path: Path) -> None:
    ring = keyring.Keyring.from_json(keyring.generate(dev=False).to_json(), "env:RADBRIDGE_KEYRING")
    kek = LocalKek(ring)
    with pytest.raises(KeyMaterialError, match="comes from env:RADBRIDGE_KEYRING"):
        kek.rotate()
    assert ring.kek_versions.keys() == {1} and ring.kek_active == 1


def test_local_kek_tampered_blob_is_integrity_error() -> None:
    vault = Vault(keyring.generate(dev=False))
    key = vault.new_data_key("rec-1")
    blob = bytearray(key.wrapped.wrapped)
    blob[-1] ^= 1
    with pytest.raises(IntegrityError, match="rec-1: data key failed to unwrap"):
        vault.unwrap(type(key.wrapped)(key.wrapped.kek_id, 1, bytes(blob)), "rec-1")


# -- Vault transit -----------------------------------------------------------------------------


@pytest.fixture
def stub() -> TransitStub:
    return TransitStub()


@pytest.fixture
def transit(stub: TransitStub) -> VaultTransitKek:
    return VaultTransitKek("http://vault.test:8200", "radbridge", TOKEN, transport=stub.transport)


def test_transit_round_trip_through_the_vault(stub: TransitStub, transit: VaultTransitKek) -> None:
    assert isinstance(transit, Kek) and transit.kek_id == "vault-transit:transit/radbridge"
    vault = Vault(keyring.generate(dev=False), transit)
    data_key = vault.new_data_key("rec-1")
    assert data_key.wrapped.kek_id == transit.kek_id and data_key.wrapped.kek_version == 1
    assert data_key.wrapped.wrapped.startswith(b"vault:v1:")
    sealed = vault.seal(data_key, "raw", b"payload")
    assert vault.open(vault.unwrap(data_key.wrapped, "rec-1"), "raw", sealed) == b"payload"
    encrypt = next(r for r in stub.requests if r.url.path == "/v1/transit/encrypt/radbridge")
    assert encrypt.method == "POST" and encrypt.headers["X-Vault-Token"] == TOKEN
    # The wrapped key is bound to its record through associated data, checked by Vault.
    with pytest.raises(IntegrityError, match="rec-2: data key failed to unwrap"):
        vault.unwrap(data_key.wrapped, "rec-2")
    # A ciphertext relabelled with another version is refused before asking Vault.
    relabelled = type(data_key.wrapped)(transit.kek_id, 2, data_key.wrapped.wrapped)
    with pytest.raises(IntegrityError, match="rec-1: data key failed to unwrap"):
        vault.unwrap(relabelled, "rec-1")


def test_transit_rotate_rewrap_and_retire(stub: TransitStub, transit: VaultTransitKek) -> None:
    vault = Vault(keyring.generate(dev=False), transit)
    old = vault.new_data_key("rec-1")
    assert transit.rotate() == 2 and transit.active == 2
    new = vault.rewrap(old.wrapped, "rec-1")
    assert new.kek_version == 2 and new.wrapped.startswith(b"vault:v2:")
    assert vault.unwrap(new, "rec-1").key == old.key
    with pytest.raises(KeyMaterialError, match="version 2 is active"):
        transit.retire(2)
    transit.retire(1)
    assert stub.min_decryption_version == 2
    assert transit.versions()[1]["retired"] is True and transit.versions()[2] == {
        "created_at": transit.versions()[2]["created_at"],
        "retired": False,
        "active": True,
    }
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        vault.unwrap(old.wrapped, "rec-1")
    assert vault.unwrap(new, "rec-1").key == old.key


def test_transit_retires_oldest_first(stub: TransitStub, transit: VaultTransitKek) -> None:
    transit.rotate()
    transit.rotate()
    with pytest.raises(KeyMaterialError, match="retire version 1 before 2"):
        transit.retire(2)
    assert stub.min_decryption_version == 1


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, r"^Vault transit key transit/radbridge: encrypt failed: Vault returned HTTP 500: Vault is sealed$"),
        (503, r"^Vault transit key transit/radbridge: encrypt failed: Vault returned HTTP 503: Vault is sealed$"),
        (404, r"not found \(HTTP 404"),
    ],
)
def test_transit_server_errors_are_one_line(
    stub: TransitStub, transit: VaultTransitKek, status: int, message: str
) -> None:
    vault = Vault(keyring.generate(dev=False), transit)
    transit.active  # noqa: B018  (version cached before the failure)
    stub.fail_with = status
    with pytest.raises(KeyMaterialError, match=message) as err:
        vault.new_data_key("rec-1")
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_transit_forbidden_token_is_clear_and_secret_free(stub: TransitStub) -> None:
    kek = VaultTransitKek("http://vault.test:8200", "radbridge", "s.wrong-token", transport=stub.transport)
    with pytest.raises(KeyMaterialError, match=r"refused: permission denied \(HTTP 403") as err:
        Vault(keyring.generate(dev=False), kek).new_data_key("rec-1")
    assert "s.wrong-token" not in str(err.value) and "s.wrong-token" not in repr(kek)


def test_transit_unreachable(stub: TransitStub) -> None:
    import httpx

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    kek = VaultTransitKek("http://vault.test:8200", "radbridge", TOKEN, transport=httpx.MockTransport(refuse))
    with pytest.raises(
        KeyMaterialError, match=r"read key failed: cannot reach http://vault.test:8200 \(ConnectError\)$"
    ):
        kek.versions()


def test_keys_never_in_errors_or_logs(
    tmp_path: Path, stub: TransitStub, transit: VaultTransitKek, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ring, _ = _file_keyring(tmp_path)
    secrets = [TOKEN.encode(), *(v.key for v in ring.kek_versions.values()), *stub.versions.values()]
    texts: list[str] = []
    for kek in (LocalKek(ring), transit):
        vault = Vault(ring, kek)
        dk = vault.new_data_key("rec-1")
        secrets.append(dk.key)
        kek.rotate()
        secrets += [*(v.key for v in ring.kek_versions.values()), *stub.versions.values()]
        for bad in ("rec-2",):
            with pytest.raises(IntegrityError) as err:
                vault.unwrap(dk.wrapped, bad)
            texts.append(str(err.value))
        kek.retire(1)
        with pytest.raises(KeyMaterialError) as err2:
            vault.unwrap(dk.wrapped, "rec-1")
        texts += [str(err2.value), repr(kek)]
    stub.fail_with = 500
    with pytest.raises(KeyMaterialError) as err3:
        transit.versions()
    texts.append(str(err3.value))
    texts.append(caplog.text)
    blob = "\n".join(texts)
    import base64

    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in blob


def test_open_kek_from_settings(stub: TransitStub) -> None:
    ring = keyring.generate(dev=False)
    assert isinstance(open_kek(ring), LocalKek)
    settings = {"addr": "http://vault.test:8200", "key": "radbridge", "token_env": "MY_VAULT_TOKEN"}
    with pytest.raises(KeyMaterialError, match="MY_VAULT_TOKEN holding the Vault token is not set"):
        open_kek(ring, "vault-transit", settings, environ={})
    with pytest.raises(KeyMaterialError, match="needs 'key'"):
        open_kek(ring, "vault-transit", {"addr": "http://x"}, environ={})
    with pytest.raises(KeyMaterialError, match="unknown KEK source"):
        open_kek(ring, "aws-kms")
    kek = open_kek(ring, "vault-transit", settings, environ={"MY_VAULT_TOKEN": TOKEN}, transport=stub.transport)
    assert isinstance(kek, VaultTransitKek)
    vault = Vault(ring, kek)
    assert vault.unwrap(vault.new_data_key("r").wrapped, "r").key
    assert os.environ.get("MY_VAULT_TOKEN") is None
