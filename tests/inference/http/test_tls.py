"""Model servers over HTTPS: verified against the configured CA (paths relative to the project
root), refused when signed by a CA the configuration does not name, or below the TLS floor."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.inference.http.oip import OipClient
from engine.inference.http.upload import UploadClient
from engine.inference.models import UploadModel
from engine.security.tls import server_context
from tests.inference.http.servers import KServe, UploadServer, serve
from tests.inference.http.test_oip import STUDY, model, prepare
from tests.inference.http.test_upload import instances
from tests.tlscerts import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("project") / "tls")


@pytest.fixture
def https(certs: Certs) -> Iterator[tuple[KServe, str]]:
    kserve = KServe()
    with serve(kserve.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        yield kserve, url


async def test_verified_against_the_configured_ca(certs: Certs, https: tuple[KServe, str]) -> None:
    kserve, url = https
    assert url.startswith("https://")
    root = certs.ca.parent.parent
    client = OipClient(model(url, external=True, tls={"ca": "tls/ca.crt"}), prepare, root=root)
    output = await client.infer(STUDY)
    await client.close()
    assert [f.code for f in output.result.findings] == ["50960005", "263204007"]
    assert len(kserve.requests) == 1


async def test_upload_over_https(certs: Certs) -> None:
    server = UploadServer()
    server.result = {"findings": []}
    with serve(server.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        config = UploadModel.model_validate({"kind": "upload", "name": "m", "version": "1", "url": f"{url}/sync",
                                             "external": True, "tls": {"ca": str(certs.ca)}})  # fmt: skip
        client = UploadClient(config, root=Path("/"))
        study = instances(2)
        await client.infer(study)
        await client.close()
    assert server.received[0].parts == study.instances


async def test_unknown_ca_is_refused(tmp_path: Path, https: tuple[KServe, str]) -> None:
    kserve, url = https
    other = make_certs(tmp_path / "other")
    for tls in ({"ca": str(other.ca)}, None):  # another CA, and the system store
        client = OipClient(model(url, tls=tls), prepare, root=Path("/"))
        with pytest.raises(PermanentError) as caught:
            await client.infer(STUDY)
        await client.close()
        assert str(caught.value) == "model ich-ct 1.2.0: metadata: TLS certificate of the server not trusted"
    assert kserve.requests == [] and kserve.metadata_calls == 0


async def test_tls_floor_is_enforced(certs: Certs) -> None:
    old = server_context(str(certs.server_cert), str(certs.server_key))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    kserve = KServe()
    with serve(kserve.app(), old) as url:
        client = OipClient(model(url, tls={"ca": str(certs.ca), "min_version": "1.3"}), prepare, root=Path("/"))
        with pytest.raises(RetryableError) as caught:  # the handshake fails; not a certificate problem
            await client.infer(STUDY)
        await client.close()
    assert kserve.metadata_calls == 0
    assert str(caught.value) == "model ich-ct 1.2.0: metadata: connection failed (ConnectError)"
    chain, seen = [], caught.value.__cause__
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert any(isinstance(e, ssl.SSLError) for e in chain)  # refused during the handshake


def test_unusable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model ich-ct 1.2.0: unusable TLS files"):
        OipClient(model("https://127.0.0.1:1", tls={"ca": "missing.pem"}), prepare, root=tmp_path)
