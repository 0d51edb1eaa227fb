"""Model server credentials over real HTTP: a static bearer token, and OAuth2 client credentials
against a token endpoint that issues expiring tokens (cached, refreshed, retried once after a 401,
shared by concurrent jobs), with the secret and tokens kept out of every error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.inference.http.auth import TokenSource
from engine.inference.http.oip import OipClient
from engine.inference.http.upload import UploadClient
from engine.inference.models import ModelAuth, OAuth2, OipModel
from tests.inference.http.servers import KServe, TokenIssuer, UploadServer, serve, static_bearer
from tests.inference.http.test_oip import STUDY, model, prepare
from tests.inference.http.test_upload import RESULT, instances
from tests.inference.http.test_upload import config as upload_config

CLIENT_ID = "radbridge-test"
SECRET = "cs-" + "Qz8vW2pL" * 4
TOKEN = "static-" + "b7e1d9a4" * 4


class Site:
    def __init__(self, issuer: TokenIssuer, kserve: KServe, url: str) -> None:
        self.issuer, self.kserve, self.url = issuer, kserve, url

    def config(self, secret: str = SECRET, **options: Any) -> OipModel:
        oauth2 = {"token_url": f"{self.url}/token", "client_id": CLIENT_ID, "client_secret": secret, "scope": "infer"}
        return model(self.url, auth={"oauth2": oauth2}, **options)


@pytest.fixture
def site() -> Iterator[Site]:
    issuer = TokenIssuer(CLIENT_ID, SECRET)
    kserve = KServe(auth=issuer.check)
    with serve(kserve.app(issuer.route())) as url:
        yield Site(issuer, kserve, url)


async def test_static_bearer() -> None:
    kserve = KServe(auth=static_bearer(TOKEN))
    with serve(kserve.app()) as url:
        client = OipClient(model(url, auth={"bearer": TOKEN}), prepare, root=Path("/"))
        assert (await client.infer(STUDY)).result.findings
        await client.close()
        client = OipClient(model(url, auth={"bearer": "wrong"}), prepare, root=Path("/"))
        with pytest.raises(PermanentError) as caught:
            await client.infer(STUDY)
        await client.close()
    assert str(caught.value) == "model ich-ct 1.2.0: metadata: server refused: 401"


async def test_token_cached_across_calls(site: Site) -> None:
    client = OipClient(site.config(), prepare, root=Path("/"))
    for _ in range(3):
        await client.infer(STUDY)
    await client.close()
    assert site.issuer.issued == 1
    assert len(site.kserve.requests) == 3
    assert site.issuer.forms == [{"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
                                  "scope": "infer"}]  # fmt: skip


async def test_token_refreshed_after_expiry(site: Site) -> None:
    site.issuer.lifetime = 0.6  # cached for 0.3 s: the margin is at most half the lifetime
    client = OipClient(site.config(), prepare, root=Path("/"))
    await client.infer(STUDY)
    await client.infer(STUDY)
    assert site.issuer.issued == 1
    await asyncio.sleep(0.4)
    await client.infer(STUDY)
    await client.close()
    assert site.issuer.issued == 2
    assert site.issuer.rejected == 0  # refreshed before the server would have refused it


async def test_401_refreshes_and_retries_once(site: Site) -> None:
    client = OipClient(site.config(), prepare, root=Path("/"))
    await client.infer(STUDY)
    site.issuer.revoke_all()  # e.g. the identity provider rolled its keys
    await client.infer(STUDY)
    assert (site.issuer.issued, site.issuer.rejected, len(site.kserve.requests)) == (2, 1, 2)
    site.kserve.auth = lambda request: site.issuer.check(request) and False  # refuses every token
    with pytest.raises(PermanentError) as caught:
        await client.infer(STUDY)
    await client.close()
    assert str(caught.value) == "model ich-ct 1.2.0: infer: server refused: 401"
    assert site.issuer.issued == 3  # one fresh token, one retry, then give up


async def test_concurrent_jobs_share_one_token(site: Site) -> None:
    auth = ModelAuth(oauth2=OAuth2(token_url=f"{site.url}/token", client_id=CLIENT_ID, client_secret=SecretStr(SECRET)))
    async with httpx.AsyncClient() as http:
        source = TokenSource(auth, http, "model m 1")
        values = await asyncio.gather(*(source.authorization() for _ in range(6)))
        assert len(set(values)) == 1 and site.issuer.issued == 1
        await asyncio.gather(*(source.rejected(values[0]) for _ in range(6)))  # six jobs refused at once
        values = await asyncio.gather(*(source.authorization() for _ in range(6)))
        assert len(set(values)) == 1 and site.issuer.issued == 2
    client = OipClient(site.config(), prepare, root=Path("/"))
    await asyncio.gather(*(client.infer(STUDY) for _ in range(6)))
    await client.close()
    assert site.issuer.issued == 3 and len(site.kserve.requests) == 6


async def test_bad_secret_is_permanent_and_never_shown(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "cs-" + "WRONGwrong" * 3
    client = OipClient(site.config(secret=wrong), prepare, root=Path("/"))
    with pytest.raises(PermanentError) as caught:
        await client.infer(STUDY)
    await client.close()
    assert str(caught.value) == "model ich-ct 1.2.0: token endpoint refused: 401"
    texts = [str(caught.value), repr(caught.value), caplog.text]
    cause: BaseException | None = caught.value
    while cause is not None:
        texts.append(repr(cause))
        cause = cause.__cause__ or cause.__context__
    for text in texts:
        assert wrong not in text and SECRET not in text
    assert site.kserve.requests == []


async def test_token_never_in_errors_of_a_refusing_model(site: Site) -> None:
    client = OipClient(site.config(), prepare, root=Path("/"))
    await client.infer(STUDY)
    site.kserve.status = 403
    with pytest.raises(PermanentError) as caught:
        await client.infer(STUDY)
    await client.close()
    issued = client._http.tokens._token  # type: ignore[union-attr]
    assert issued and issued not in str(caught.value) and issued not in repr(caught.value)
    assert str(caught.value) == "model ich-ct 1.2.0: infer: server refused: 403"


async def test_token_endpoint_unavailable_is_retryable(site: Site) -> None:
    site.issuer.status = 503
    client = OipClient(site.config(), prepare, root=Path("/"))
    with pytest.raises(RetryableError, match="token endpoint: server answered 503"):
        await client.infer(STUDY)
    site.issuer.status = 400
    with pytest.raises(PermanentError, match="token endpoint refused: 400"):
        await client.infer(STUDY)
    await client.close()


async def test_token_endpoint_down_is_retryable(site: Site) -> None:
    with serve(KServe().app()) as gone:
        pass
    config = model(site.url, auth={"oauth2": {"token_url": f"{gone}/token", "client_id": CLIENT_ID,
                                              "client_secret": SECRET}})  # fmt: skip
    client = OipClient(config, prepare, root=Path("/"))
    with pytest.raises(RetryableError, match="token endpoint: connection failed"):
        await client.infer(STUDY)
    await client.close()


async def test_answer_without_token_is_permanent() -> None:
    issuer = TokenIssuer(CLIENT_ID, SECRET, omit_token=True)
    with serve(KServe(auth=issuer.check).app(issuer.route())) as url:
        auth = ModelAuth(oauth2=OAuth2(token_url=f"{url}/token", client_id=CLIENT_ID, client_secret=SecretStr(SECRET)))
        async with httpx.AsyncClient() as http:
            source = TokenSource(auth, http, "model m 1")
            with pytest.raises(PermanentError, match="answer without a usable access_token"):
                await source.authorization()


async def test_rejected_only_drops_the_token_it_names(site: Site) -> None:
    auth = ModelAuth(oauth2=OAuth2(token_url=f"{site.url}/token", client_id=CLIENT_ID, client_secret=SecretStr(SECRET)))
    async with httpx.AsyncClient() as http:
        source = TokenSource(auth, http, "model m 1")
        first = await source.authorization()
        await source.rejected(first)
        second = await source.authorization()
        await source.rejected(first)  # a late 401 to the old token must not drop the new one
        assert await source.authorization() == second != first
    assert site.issuer.issued == 2


def test_external_model_needs_an_https_token_endpoint() -> None:
    config = OipModel.model_validate({
        **model("https://ai.example.test").model_dump(mode="json", exclude={"auth"}), "external": True,
        "auth": {"oauth2": {"token_url": "http://idp.example.test/token", "client_id": "c", "client_secret": "s"}},
    })  # fmt: skip
    with pytest.raises(ConfigError, match="token endpoint is reached over https only"):
        OipClient(config, prepare, root=Path("/"))


async def test_upload_streams_again_after_a_401() -> None:
    """The multipart body is a stream: the retry with a fresh token must send it whole once more."""
    issuer = TokenIssuer(CLIENT_ID, SECRET)
    server = UploadServer(auth=issuer.check)
    server.result = dict(RESULT)
    with serve(server.app(issuer.route())) as url:
        oauth2 = {"token_url": f"{url}/token", "client_id": CLIENT_ID, "client_secret": SECRET}
        client = UploadClient(upload_config(f"{url}/sync", auth={"oauth2": oauth2}), root=Path("/"))
        study = instances(3)
        await client.infer(study)
        issuer.revoke_all()
        await client.infer(study)
        await client.close()
    assert (issuer.issued, issuer.rejected) == (2, 1)
    assert [r.parts == study.instances for r in server.received] == [True, True]
