"""The `fhir` destination: AI results and priority updates onto the hospital's FHIR R4 server.

Each message is one canonical record as the outputs stage publishes it
(`{"type": "result" | "priority_update", "topic": ..., "fields": {...}}`, e.g. from a `topic` source on
`result.*` or `worklist.priority`):
- result: a transaction Bundle (engine.fhir.report) POSTed to base_url; a correction or withdrawal first
  reads the report with its Observations (`_include`) to retire the earlier ones. Delivered.response is
  the transaction-response Bundle (kept sealed), Delivered.detail its server ids and statuses.
- priority_update: JSON Patch of ServiceRequest.priority or Task.priority (engine.fhir.priority), per
  `priority_update`. No ServiceRequest/Task found yet (404 or an empty search) is retried: the order may
  not have reached the FHIR server.
Withheld, marked delivered without any request: everything while `release: off` (the default), and
shadow results (`clinical: false`), which never leave as clinical output.

Settings: FhirDestinationConfig (with the identifier systems of engine.fhir.options.FhirOptions). Errors:
engine.fhir.client. Messages name the channel, the message id, the step, HTTP statuses and
OperationOutcome issue codes — never patient data.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.config.tls import ClientTls
from engine.core.component import ComponentContext, Delivered, Outbound
from engine.core.errors import PermanentError
from engine.core.registry import register
from engine.fhir.bundle import JSON_PATCH, compact, read_record
from engine.fhir.client import Answer, FhirClient, FhirRefused, FhirUnavailable, summary
from engine.fhir.options import FhirOptions, search_token
from engine.fhir.priority import PriorityMode, accession_tokens, priority_patch, search_url, target_url
from engine.fhir.report import prior_observations, report_bundle, report_key
from engine.mapping.records import InferenceResult, PriorityUpdate
from engine.security.oauth2 import OAuth2Client
from engine.security.tls import client_context_for

log = logging.getLogger("radbridge.fhir")
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))  # URLs hold MRNs

WITHHELD_OFF = "withheld: release off"
WITHHELD_SHADOW = "withheld: shadow result"
_MINIMAL = {"Prefer": "return=minimal"}  # the stored answer then holds ids and statuses, not the resources


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FhirAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    bearer: SecretStr | None = Field(
        None, description="Static token sent as `Authorization: Bearer <token>`; write `${TOKEN}`, never the value."
    )
    oauth2: OAuth2Client | None = Field(
        None,
        description="OAuth2 client credentials (client_secret_post, client_secret_basic, or SMART Backend Services "
        "private_key_jwt); the token is cached until it expires and fetched again after a 401.",
    )

    @model_validator(mode="after")
    def _one(self) -> FhirAuth:
        if (self.bearer is None) == (self.oauth2 is None):
            raise ValueError("auth needs exactly one of bearer or oauth2 (leave auth out for none)")
        return self


class FhirDestinationConfig(FhirOptions):
    base_url: str = Field(
        pattern=r"^https?://[^\s?#]+$",
        description="The FHIR server's base URL (R4), e.g. `https://fhir.hospital.example/fhir`; transactions are "
        "POSTed to it.",
    )
    tls: ClientTls | None = Field(
        None, description="CA to verify the server with, and a client certificate for mutual TLS (PEM files)."
    )
    auth: FhirAuth | None = Field(None, description="Credentials: `bearer` or `oauth2`; none when left out.")
    release: Literal["off", "preliminary"] = Field(
        "off",
        description="Which AI output this server receives. `off` (the default): nothing — every message is "
        "marked delivered as `withheld: release off` without contacting the server, because an EHR may show "
        "what it receives to clinicians and patients (portals) at once. `preliminary`: AI results as "
        "preliminary reports, their corrections and withdrawals, and priority updates. Set it once the site "
        "has approved showing unverified AI results in this system.",
    )
    priority_update: PriorityMode = Field(
        "servicerequest-conditional",
        description="How a priority update is written: `servicerequest-conditional` (PATCH "
        "ServiceRequest?identifier=...), `servicerequest-patch` (search, then PATCH ServiceRequest/<id> with "
        "If-Match), or `task` (PATCH every open Task based on the ServiceRequest).",
    )
    timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for one request (token fetch included).")

    @model_validator(mode="after")
    def _credentials_over_tls(self) -> FhirDestinationConfig:
        if self.auth is not None and self.base_url.startswith("http://") and not _loopback(self.base_url):
            raise ValueError("credentials go over https only (an http base_url is allowed for a loopback host)")
        oauth2 = self.auth.oauth2 if self.auth else None
        if oauth2 is not None and not oauth2.token_url.startswith("https://") and not _loopback(oauth2.token_url):
            raise ValueError("the token endpoint is reached over https only (or on a loopback host)")
        return self


def read_message(message: Outbound, what: str) -> tuple[str, dict[str, Any]]:
    """(record type, fields) of a message; PermanentError naming the message, never its content."""
    try:
        body = json.loads(message.body)
    except (ValueError, UnicodeDecodeError):
        raise PermanentError(f"{what}: body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not isinstance(body.get("fields"), dict):
        raise PermanentError(f"{what}: body is not a canonical record (type, fields)")
    return body["type"], body["fields"]


@register("destination", "fhir")
class FhirDestination:
    """Sends result and priority_update records to a FHIR server (see the module docstring)."""

    Config = FhirDestinationConfig

    def __init__(self, config: FhirDestinationConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        what = f"fhir destination of {ctx.channel}"
        self.client = FhirClient(config.base_url, verify=client_context_for(config.tls, ctx.root, what),
                                 timeout_s=config.timeout_s, what=what, auth=config.auth, root=ctx.root)  # fmt: skip

    async def close(self) -> None:
        await self.client.close()

    async def send(self, message: Outbound) -> Delivered:
        if self.config.release == "off":
            return Delivered(detail=WITHHELD_OFF)
        what = f"message {message.message_id}"
        kind, fields = read_message(message, f"{self.client.what}: {what}")
        try:
            if kind == "result":
                return await self._result(fields, what)
            if kind == "priority_update":
                return await self._priority(fields, what)
        except ValueError as exc:  # the builders' content errors name fields, never values
            raise PermanentError(f"{self.client.what}: {what}: {exc}") from None
        raise PermanentError(f"{self.client.what}: {what}: record type {kind!r} is not sent to FHIR")

    async def _result(self, fields: dict[str, Any], what: str) -> Delivered:
        result = read_record(InferenceResult, fields, "result")
        if not result.clinical:
            return Delivered(detail=WITHHELD_SHADOW)
        prior = []
        if result.status != "preliminary":
            token = search_token(self.config.report_identifier_system, report_key(result))
            found = await self.client.search(f"DiagnosticReport?identifier={token}&_include=DiagnosticReport:result",
                                             step=f"{what}: read report")  # fmt: skip
            prior = prior_observations(found)
        bundle = report_bundle(result, self.config, prior)
        versioned = any("ifMatch" in entry["request"] for entry in bundle["entry"])
        answer = await self.client.request("POST", "", step=f"{what}: transaction", body=compact(bundle),
                                           headers=_MINIMAL, versioned=versioned)  # fmt: skip
        detail = summary(answer.body)
        log.info("%s %s: %s %s", self.client.what, what, result.status, detail)
        return Delivered(response=answer.body, detail=detail)

    async def _priority(self, fields: dict[str, Any], what: str) -> Delivered:
        update = read_record(PriorityUpdate, fields, "priority_update")
        mode, patch = self.config.priority_update, priority_patch(update)
        answers: list[tuple[str, Answer]] = []
        for n, token in enumerate(accession_tokens(update, self.config), start=1):
            step = f"{what}: priority of order {n}"
            conditional = target_url(mode, token)
            if conditional is not None:
                try:
                    answer = await self.client.request("PATCH", conditional, step=step, body=patch,
                                                       content_type=JSON_PATCH, headers=_MINIMAL)  # fmt: skip
                except FhirRefused as exc:
                    if exc.status != 404:
                        raise
                    raise FhirUnavailable(f"{exc}: no ServiceRequest for the order's accession yet") from None
                answers.append((answer.location("ServiceRequest"), answer))
                continue
            kind = "Task" if mode == "task" else "ServiceRequest"
            found = await self.client.search(search_url(mode, token), step=f"{step}: search")
            targets = [e["resource"] for e in found.get("entry") or [] if isinstance(e, dict)
                       and isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == kind
                       and isinstance(e["resource"].get("id"), str)]  # fmt: skip
            if not targets:
                raise FhirUnavailable(f"{self.client.what}: {step}: no {'open Task' if mode == 'task' else kind} "
                                      "for the order's accession yet")  # fmt: skip
            if kind == "ServiceRequest" and len(targets) > 1:
                raise PermanentError(f"{self.client.what}: {step}: {len(targets)} ServiceRequests carry the accession")
            for resource in targets:
                headers = dict(_MINIMAL)
                version = (resource.get("meta") or {}).get("versionId")
                if isinstance(version, str):
                    headers["If-Match"] = f'W/"{version}"'
                answer = await self.client.request("PATCH", f"{kind}/{resource['id']}", step=step, body=patch,
                                                   content_type=JSON_PATCH, headers=headers)  # fmt: skip
                answers.append((f"{kind}/{resource['id']}", answer))
        detail = f"priority {update.priority}: " + ", ".join(f"{where} {a.status}" for where, a in answers)
        log.info("%s %s: %s", self.client.what, what, detail)
        return Delivered(response=b"\n".join(a.body for _, a in answers if a.body) or None, detail=detail)
