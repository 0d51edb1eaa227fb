import base64
import logging
import os
from pathlib import Path

import pytest

from engine.core.errors import KeyMaterialError
from engine.security import keyring


def test_dev_keyring_created_0600_with_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "home" / ".radbridge" / "keyring.json"
    with caplog.at_level(logging.WARNING):
        ring = keyring.load("file", str(path), "X", data_dir=tmp_path / "data", create_dev=True)
    assert ring.dev
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "DEVELOPMENT KEYRING CREATED" in caplog.text
    again = keyring.load("file", str(path), "X", data_dir=tmp_path / "data")
    assert again.index_key == ring.index_key and again.kek(1) == ring.kek(1)


def test_key_file_with_wider_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring.write_file(keyring.generate(dev=False), path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyMaterialError, match="has mode 0644; it must be 0600"):
        keyring.load("file", str(path), "X", data_dir=tmp_path / "data")


def test_key_file_inside_data_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="inside the data folder"):
        keyring.load("file", str(tmp_path / "data" / "k.json"), "X", data_dir=tmp_path / "data", create_dev=True)
    assert not (tmp_path / "data" / "k.json").exists()


def test_missing_key_file_without_dev_creation_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="does not exist"):
        keyring.load("file", str(tmp_path / "none.json"), "X", data_dir=tmp_path / "data")


def test_keyring_from_environment_json_or_base64(tmp_path: Path) -> None:
    ring = keyring.generate(dev=False)
    text = ring.to_json()
    for value in (text, base64.b64encode(text.encode()).decode()):
        loaded = keyring.load("env", "", "RB_KEYS", data_dir=tmp_path, environ={"RB_KEYS": value})
        assert loaded.kek(1) == ring.kek(1) and loaded.source == "env:RB_KEYS"
    with pytest.raises(KeyMaterialError, match="RB_KEYS holding the keyring is not set"):
        keyring.load("env", "", "RB_KEYS", data_dir=tmp_path, environ={})


def test_malformed_keyring_is_reported_without_key_material(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text('{"format": "radbridge-keyring/1", "kek": {"id": "x", "active": 1, "versions": {}}}')
    path.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="incomplete or malformed"):
        keyring.read_file(path)


def test_describe_never_contains_key_material() -> None:
    ring = keyring.generate(dev=True)
    text = repr(ring.describe())
    for secret in (ring.kek(1), ring.index_key, ring.audit_key):
        assert base64.b64encode(secret).decode() not in text and secret.hex() not in text
