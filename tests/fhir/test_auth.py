"""FHIR destination credentials over real HTTP: SMART Backend Services (private_key_jwt, RS384 and ES384,
verified by the token endpoint with the registered public key), client_secret_basic, and the settings
that are refused before anything starts (credentials over plain HTTP, keys that cannot sign)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from engine.connectors.fhir import FhirDestinationConfig
from engine.core.errors import ConfigError, PermanentError
from engine.security.oauth2 import OAuth2Client, SigningKey
from tests.fhir.records import OPTIONS, result_fields
from tests.fhir.server import FhirServer, TokenEndpoint
from tests.fhir.site import CLIENT_ID, SECRET, Site, message
from tests.inference.http.servers import serve


def write_key(path: Path, key: Any) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o600)
    return path.name


KEYS = {"ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "RS384": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}  # fmt: skip


@pytest.fixture(params=sorted(KEYS))
def jwt_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Site, str, str]]:
    alg = request.param
    key = KEYS[alg]()
    name = write_key(tmp_path / f"{alg}.pem", key)
    issuer = TokenEndpoint(CLIENT_ID, method="private_key_jwt", keys={f"kid-{alg}": key.public_key()})
    server = FhirServer(auth=issuer.check)
    with serve(server.app(issuer.route())) as url:
        issuer.url = f"{url}/token"
        yield Site(server, issuer, url, tmp_path), alg, name


def jwt_auth(site: Site, key_file: str, kid: str, **extra: Any) -> dict[str, Any]:
    oauth2 = {"token_url": site.issuer.url, "client_id": CLIENT_ID, "token_endpoint_auth_method": "private_key_jwt",
              "private_key": key_file, "kid": kid, "scope": "system/DiagnosticReport.write system/Observation.write",
              **extra}  # fmt: skip
    return {"oauth2": oauth2}


async def test_private_key_jwt(jwt_site: tuple[Site, str, str]) -> None:
    site, alg, key_file = jwt_site
    dest = site.destination(auth=jwt_auth(site, key_file, f"kid-{alg}", jku="https://radbridge.example/jwks.json"))
    await dest.send(message(result_fields()))
    site.issuer.revoke_all()  # the next request gets a 401, then a fresh token with a fresh assertion
    await dest.send(message(result_fields()))
    await dest.close()
    assert site.issuer.failures == [] and site.issuer.issued == 2
    (header, claims), (_, second) = site.issuer.assertions
    assert header == {"alg": alg, "kid": f"kid-{alg}", "typ": "JWT", "jku": "https://radbridge.example/jwks.json"}
    assert (claims["iss"], claims["sub"], claims["aud"]) == (CLIENT_ID, CLIENT_ID, site.issuer.url)
    assert 0 < claims["exp"] - time.time() <= 300 and claims["jti"] != second["jti"]
    form = site.issuer.forms[0]
    assert sorted(form) == ["client_assertion", "client_assertion_type", "grant_type", "scope"]
    assert form["scope"] == "system/DiagnosticReport.write system/Observation.write"
    assert len(site.server.all("DiagnosticReport")) == 1


async def test_assertion_signed_by_an_unregistered_key_is_refused(jwt_site: tuple[Site, str, str]) -> None:
    site, alg, _ = jwt_site
    other = write_key(site.root / "other.pem", KEYS[alg]())
    dest = site.destination(auth=jwt_auth(site, other, f"kid-{alg}"))
    with pytest.raises(PermanentError, match="token endpoint refused: 401"):
        await dest.send(message(result_fields()))
    await dest.close()
    assert site.issuer.failures == ["signature"] and site.server.requests == []


async def test_client_secret_basic(tmp_path: Path) -> None:
    secret = SECRET + ":&%"  # form-urlencoded before the Basic encoding, so these survive
    issuer = TokenEndpoint(CLIENT_ID, secret=secret, method="client_secret_basic")
    server = FhirServer(auth=issuer.check)
    with serve(server.app(issuer.route())) as url:
        issuer.url = f"{url}/token"
        site = Site(server, issuer, url, tmp_path)
        oauth2 = {"token_url": issuer.url, "client_id": CLIENT_ID, "client_secret": secret,
                  "token_endpoint_auth_method": "client_secret_basic"}  # fmt: skip
        dest = site.destination(auth={"oauth2": oauth2})
        await dest.send(message(result_fields()))
        await dest.close()
    assert issuer.failures == [] and issuer.forms == [{"grant_type": "client_credentials"}]


def _config(**changes: Any) -> FhirDestinationConfig:
    return FhirDestinationConfig.model_validate({**OPTIONS.model_dump(), "base_url": "https://fhir.example/r4",
                                                 **changes})  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"base_url": "http://fhir.example/r4", "auth": {"bearer": "t" * 20}}, "credentials go over https only"),
        ({"auth": {"oauth2": {"token_url": "http://idp.example/token", "client_id": "c", "client_secret": "s"}}},
         "token endpoint is reached over https only"),
        ({"auth": {"oauth2": {"token_url": "https://idp.example/token", "client_id": "c",
                              "token_endpoint_auth_method": "private_key_jwt", "private_key": "k.pem"}}},
         "private_key_jwt needs private_key and kid"),
        ({"auth": {"oauth2": {"token_url": "https://idp.example/token", "client_id": "c"}}},
         "client_secret_post needs client_secret"),
        ({"auth": {"bearer": "t" * 20, "oauth2": {"token_url": "https://i/t", "client_id": "c", "client_secret": "s"}}},
         "exactly one of bearer or oauth2"),
        ({"release": "final"}, "release"),
    ],
)  # fmt: skip
def test_settings_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _config(**changes)


def test_http_is_fine_on_loopback() -> None:
    config = _config(base_url="http://127.0.0.1:8080/fhir", auth={"oauth2": {
        "token_url": "http://localhost:8080/token", "client_id": "c", "client_secret": "s"}})  # fmt: skip
    assert config.auth is not None and config.auth.oauth2 is not None


def test_keys_that_cannot_sign_are_refused_at_startup(tmp_path: Path) -> None:
    small = write_key(tmp_path / "small.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    p256 = write_key(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "junk.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="2048 bits or more"):
        SigningKey.load(tmp_path / small, None, "fhir x")
    with pytest.raises(ConfigError, match="on curve P-384"):
        SigningKey.load(tmp_path / p256, None, "fhir x")
    with pytest.raises(ConfigError, match="RS384 only"):
        SigningKey.load(tmp_path / write_key(tmp_path / "rsa.pem", KEYS["RS384"]()), "ES384", "fhir x")
    with pytest.raises(ConfigError, match=r"fhir x: unusable private key file \(ValueError\)"):
        SigningKey.load(tmp_path / "junk.pem", None, "fhir x")
    with pytest.raises(ConfigError, match=r"unusable private key file \(FileNotFoundError\)"):
        SigningKey.load(tmp_path / "missing.pem", None, "fhir x")


def test_destination_with_a_missing_key_fails_to_build(tmp_path: Path) -> None:
    site = Site(FhirServer(), TokenEndpoint(CLIENT_ID), "https://127.0.0.1:1", tmp_path)
    site.issuer.url = "https://127.0.0.1:1/token"
    with pytest.raises(ConfigError, match="fhir destination of ai-fhir: unusable private key file"):
        site.destination(auth=jwt_auth(site, "nope.pem", "k1"))


def test_model_server_settings_still_convert() -> None:
    """The model servers' older `oauth2` shape (no method) is client_secret_post."""
    converted = OAuth2Client.model_validate({"token_url": "https://i/t", "client_id": "c", "client_secret": "s"})
    assert converted.token_endpoint_auth_method == "client_secret_post"
