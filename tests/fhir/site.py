"""The FHIR test site: a FhirServer and TokenEndpoint served on 127.0.0.1, and `fhir` destinations
configured against them (client_secret_post OAuth2 unless a test says otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from engine.connectors.fhir import FhirDestination, FhirDestinationConfig
from engine.core import registry
from engine.core.component import ComponentContext, Outbound
from engine.mapping.records import Record
from tests.fhir.records import OPTIONS
from tests.fhir.server import FhirServer, TokenEndpoint
from tests.inference.http.servers import serve

CLIENT_ID = "radbridge-fhir"
SECRET = "cs-" + "Fh1rSecr" * 4


async def _no_audit(*args: Any, **kwargs: Any) -> None:
    return None


@dataclass
class Site:
    server: FhirServer
    issuer: TokenEndpoint
    url: str
    root: Path

    def destination(self, **options: Any) -> FhirDestination:
        settings: dict[str, Any] = {
            **OPTIONS.model_dump(), "base_url": f"{self.url}/fhir", "release": "preliminary", "timeout_s": 2,
            "auth": {"oauth2": {"token_url": self.issuer.url, "client_id": CLIENT_ID, "client_secret": SECRET}},
        }  # fmt: skip
        settings.update(options)
        config = FhirDestinationConfig.model_validate(settings)
        ctx = ComponentContext(channel="ai-fhir", root=self.root, audit=_no_audit, site_tz=UTC)
        return registry.build("destination", "fhir", config, ctx)


def message(fields: dict[str, Any], kind: str = "result", n: int = 1) -> Outbound:
    body = Record(kind, f"{kind}.x", fields).to_json()
    return Outbound(f"M{n}", "ehr", body, "record")


def serve_site(tmp_path: Path) -> Iterator[Site]:
    issuer = TokenEndpoint(CLIENT_ID, secret=SECRET)
    server = FhirServer(auth=issuer.check)
    with serve(server.app(issuer.route())) as url:
        issuer.url = f"{url}/token"
        yield Site(server, issuer, url, tmp_path)
