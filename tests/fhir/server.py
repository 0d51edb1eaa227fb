"""A small FHIR R4 server and OAuth2 token endpoint for the destination tests, served for real by uvicorn
(tests.inference.http.servers.serve).

FhirServer keeps resources in memory and implements what the destination uses, the way HAPI FHIR does:
transactions (POST with ifNoneExist = conditional create, PUT `Type?search` = conditional update, PATCH
with a JSON Patch Binary and ifMatch; urn:uuid references rewritten; all or nothing), search by
identifier with `_include=DiagnosticReport:result`, `Task?based-on:ServiceRequest.identifier=`, and PATCH
by id (If-Match) or conditional. Knobs: `script` (forced answers for the next requests), `delay` (seconds
to wait after committing a transaction before answering), `auth` (a bearer check).

TokenEndpoint issues expiring tokens to one client, authenticated by client_secret_post,
client_secret_basic or private_key_jwt (signature verified with the registered public key, aud = the
token URL, iss = sub = client_id, exp in the future and at most 5 minutes ahead, jti never reused).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FHIR_JSON = "application/fhir+json"


def outcome(code: str, diagnostics: str = "", status: int = 400) -> Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}  # fmt: skip
    return JSONResponse(body, status, media_type=FHIR_JSON)


class Refused(Exception):
    def __init__(self, status: int, code: str, diagnostics: str = "") -> None:
        self.status, self.code, self.diagnostics = status, code, diagnostics


def _token(value: str) -> tuple[str, str]:
    """A token search value `system|value` (FHIR escapes undone)."""
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == "|":
            break
        i += 1
    unescape = lambda s: s.replace("\\|", "|").replace("\\,", ",").replace("\\$", "$").replace("\\\\", "\\")  # noqa: E731
    return unescape(value[:i]), unescape(value[i + 1 :])


def _has_identifier(resource: dict[str, Any], token: str) -> bool:
    system, value = _token(token)
    return any(i.get("system") == system and i.get("value") == value for i in resource.get("identifier") or [])


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids))
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def _patch(resource: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    result = copy.deepcopy(resource)
    for op in operations:
        name = op["path"].lstrip("/")
        if "/" in name or op["op"] not in ("add", "replace", "test"):
            raise Refused(422, "not-supported", "only top-level add/replace/test")
        if op["op"] == "test" and result.get(name) != op["value"]:
            raise Refused(422, "processing", "test failed")
        if op["op"] == "replace" and name not in result:
            raise Refused(422, "processing", "replace of a missing member")
        if op["op"] != "test":
            result[name] = op["value"]
    return result


@dataclass
class Seen:
    method: str
    url: str  # path and query, as sent
    headers: dict[str, str]
    body: bytes


@dataclass
class FhirServer:
    auth: Callable[[Request], bool] | None = None
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0.0
    store: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def app(self, *extra: Route) -> Starlette:
        return Starlette(routes=[
            *extra,
            Route("/fhir", self._transaction, methods=["POST"]),
            Route("/fhir/{kind}", self._search, methods=["GET"]),
            Route("/fhir/{kind}", self._conditional_patch, methods=["PATCH"]),
            Route("/fhir/{kind}/{id}", self._read, methods=["GET"]),
            Route("/fhir/{kind}/{id}", self._patch_by_id, methods=["PATCH"]),
        ])  # fmt: skip

    # -- state

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.store.get(kind, {}).values())

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a new resource (test set-up); returns it with id and meta.versionId."""
        resource = {**resource, "id": str(next(self._ids)), "meta": {"versionId": "1"}}
        self.store.setdefault(resource["resourceType"], {})[resource["id"]] = resource
        return resource

    def _matches(self, kind: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        found = self.all(kind)
        for name, value in query:
            if name == "identifier":
                found = [r for r in found if _has_identifier(r, value)]
            elif name == "status":
                found = [r for r in found if r.get("status") in value.split(",")]
            elif name == "based-on:ServiceRequest.identifier":
                orders = {f"ServiceRequest/{r['id']}" for r in self.all("ServiceRequest") if _has_identifier(r, value)}
                found = [r for r in found if any(b.get("reference") in orders for b in r.get("basedOn") or [])]
            elif not name.startswith("_"):
                raise Refused(400, "not-supported", f"search parameter {name}")
        return found

    def _save(self, resource: dict[str, Any], existing: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        if existing is None:
            resource = {**resource, "id": str(next(self._ids)), "meta": {"versionId": "1"}}
            status = "201 Created"
        else:
            resource = {**resource, "id": existing["id"],
                        "meta": {"versionId": str(int(existing["meta"]["versionId"]) + 1)}}  # fmt: skip
            status = "200 OK"
        self.store.setdefault(resource["resourceType"], {})[resource["id"]] = resource
        return resource, status

    # -- routes

    async def _gate(self, request: Request) -> tuple[Response | None, bytes]:
        body = await request.body()
        self.requests.append(Seen(request.method, request.url.path + (f"?{request.url.query}" if request.url.query
                                  else ""), dict(request.headers), body))  # fmt: skip
        if self.auth is not None and not self.auth(request):
            return outcome("login", "token not valid", 401), body
        if self.script:
            status, headers, data = self.script.pop(0)
            return Response(data, status, headers=headers, media_type=FHIR_JSON), body
        return None, body

    async def _transaction(self, request: Request) -> Response:
        refused, body = await self._gate(request)
        if refused is not None:
            return refused
        if request.headers.get("content-type") != FHIR_JSON:
            return outcome("not-supported", "Content-Type", 415)
        bundle = json.loads(body)
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            return outcome("invalid", "not a transaction")
        snapshot = copy.deepcopy(self.store)
        try:
            answer = self._apply(bundle["entry"])
        except Refused as exc:
            self.store = snapshot  # all or nothing
            return outcome(exc.code, exc.diagnostics, exc.status)
        if self.delay:
            await asyncio.sleep(self.delay)  # committed; the client may be gone by now
        return JSONResponse({"resourceType": "Bundle", "type": "transaction-response", "entry": answer},
                            media_type=FHIR_JSON)  # fmt: skip

    def _apply(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids: dict[str, str] = {}
        plan: list[tuple[int, dict[str, Any], dict[str, Any] | None]] = []
        responses: list[dict[str, Any]] = [{} for _ in entries]
        for n, entry in enumerate(entries):  # resolve targets first: fullUrl -> Type/id
            request, resource = entry["request"], entry.get("resource")
            method = request["method"]
            if method == "POST":
                existing = None
                if request.get("ifNoneExist"):
                    hits = self._matches(request["url"], parse_qsl(request["ifNoneExist"]))
                    if len(hits) > 1:
                        raise Refused(412, "duplicate", "ifNoneExist matches several")
                    existing = hits[0] if hits else None
                if existing is not None:
                    where = ids[entry["fullUrl"]] = f"{request['url']}/{existing['id']}"
                    responses[n] = {"status": "200 OK", "location": f"{where}/_history/{existing['meta']['versionId']}"}
                    continue
                plan.append((n, entry, None))
            elif method == "PUT":
                kind, _, query = request["url"].partition("?")
                hits = self._matches(kind, parse_qsl(query)) if query else []
                if len(hits) > 1:
                    raise Refused(412, "multiple-matches", "conditional update matches several")
                plan.append((n, entry, hits[0] if hits else None))
            elif method == "PATCH":
                kind, _, rid = request["url"].partition("/")
                target = self.store.get(kind, {}).get(rid)
                if target is None:
                    raise Refused(404, "not-found", request["url"])
                if "ifMatch" in request and request["ifMatch"] != f'W/"{target["meta"]["versionId"]}"':
                    raise Refused(412, "conflict", "version")
                assert resource["resourceType"] == "Binary" and resource["contentType"] == "application/json-patch+json"
                patched, status = self._save(_patch(target, json.loads(base64.b64decode(resource["data"]))), target)
                responses[n] = {"status": status, "location": f"{kind}/{rid}/_history/{patched['meta']['versionId']}"}
            else:
                raise Refused(400, "not-supported", method)
        new_ids: dict[int, str] = {}
        for n, entry, existing in plan:  # ids for the new ones, so references can name them
            rid = existing["id"] if existing else new_ids.setdefault(n, str(next(self._ids)))
            ids[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/{rid}"
        for n, entry, existing in plan:
            resource = _rewrite(entry["resource"], ids)
            kind = resource["resourceType"]
            if existing is None:
                saved = {**resource, "id": new_ids[n], "meta": {"versionId": "1"}}
                self.store.setdefault(kind, {})[saved["id"]] = saved
                status = "201 Created"
            else:
                saved, status = self._save(resource, existing)
            responses[n] = {"status": status, "location": f"{kind}/{saved['id']}/_history/{saved['meta']['versionId']}"}
        return [{"response": r} for r in responses]

    async def _search(self, request: Request) -> Response:
        refused, _ = await self._gate(request)
        if refused is not None:
            return refused
        kind = request.path_params["kind"]
        query = parse_qsl(request.url.query)
        try:
            hits = self._matches(kind, query)
        except Refused as exc:
            return outcome(exc.code, exc.diagnostics, exc.status)
        entries = [{"resource": r, "search": {"mode": "match"}} for r in hits]
        if ("_include", "DiagnosticReport:result") in query:
            for report in hits:
                for ref in report.get("result") or []:
                    rkind, _, rid = ref["reference"].partition("/")
                    if rid in self.store.get(rkind, {}):
                        entries.append({"resource": self.store[rkind][rid], "search": {"mode": "include"}})
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "total": len(hits), "entry": entries},
                            media_type=FHIR_JSON)  # fmt: skip

    async def _read(self, request: Request) -> Response:
        refused, _ = await self._gate(request)
        if refused is not None:
            return refused
        found = self.store.get(request.path_params["kind"], {}).get(request.path_params["id"])
        return JSONResponse(found, media_type=FHIR_JSON) if found else outcome("not-found", "", 404)

    async def _patched(self, request: Request, body: bytes, target: dict[str, Any]) -> Response:
        if request.headers.get("content-type") != "application/json-patch+json":
            return outcome("not-supported", "Content-Type", 415)
        match = request.headers.get("if-match")
        if match is not None and match != f'W/"{target["meta"]["versionId"]}"':
            return outcome("conflict", "version", 412)
        try:
            saved, _ = self._save(_patch(target, json.loads(body)), target)
        except Refused as exc:
            return outcome(exc.code, exc.diagnostics, exc.status)
        where = f"{saved['resourceType']}/{saved['id']}/_history/{saved['meta']['versionId']}"
        return Response(b"", 200, headers={"Content-Location": where, "ETag": f'W/"{saved["meta"]["versionId"]}"'})

    async def _patch_by_id(self, request: Request) -> Response:
        refused, body = await self._gate(request)
        if refused is not None:
            return refused
        target = self.store.get(request.path_params["kind"], {}).get(request.path_params["id"])
        return await self._patched(request, body, target) if target else outcome("not-found", "", 404)

    async def _conditional_patch(self, request: Request) -> Response:
        refused, body = await self._gate(request)
        if refused is not None:
            return refused
        hits = self._matches(request.path_params["kind"], parse_qsl(request.url.query))
        if not hits:
            return outcome("not-found", "no match", 404)
        if len(hits) > 1:
            return outcome("multiple-matches", "several match", 412)
        return await self._patched(request, body, hits[0])


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenEndpoint:
    """OAuth2 client credentials at POST /token for one client. `method` is what it requires; for
    private_key_jwt, `keys` maps kid -> public key. `failures` records why requests were refused."""

    def __init__(self, client_id: str, *, secret: str | None = None, method: str = "client_secret_post",
                 keys: dict[str, Any] | None = None, lifetime: float = 3600) -> None:  # fmt: skip
        self.client_id, self.secret, self.method, self.keys = client_id, secret, method, keys or {}
        self.lifetime = lifetime
        self.url = ""  # set by the test once served: the aud every assertion must name
        self.issued = 0
        self.rejected = 0
        self.failures: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (header, claims) accepted
        self._jtis: set[str] = set()
        self._valid: dict[str, float] = {}

    def route(self) -> Route:
        return Route("/token", self._token, methods=["POST"])

    def revoke_all(self) -> None:
        self._valid.clear()

    def check(self, request: Request) -> bool:
        value = request.headers.get("authorization", "")
        ok = value.startswith("Bearer ") and self._valid.get(value[7:], 0.0) > time.monotonic()
        self.rejected += not ok
        return ok

    def _refuse(self, why: str) -> Response:
        self.failures.append(why)
        return JSONResponse({"error": "invalid_client"}, 401)

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(), strict_parsing=True).items()}
        self.forms.append(form)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if self.method == "client_secret_post":
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.secret:
                return self._refuse("secret")
        elif self.method == "client_secret_basic":
            value = request.headers.get("authorization", "")
            try:
                user, _, password = base64.b64decode(value.removeprefix("Basic ")).decode().partition(":")
            except ValueError:
                return self._refuse("basic header")
            if not value.startswith("Basic ") or unquote(user) != self.client_id or unquote(password) != self.secret:
                return self._refuse("basic")
            if "client_secret" in form:
                return self._refuse("secret in the form as well")
        else:
            why = self._verify(form)
            if why:
                return self._refuse(why)
        token = secrets.token_urlsafe(24)
        self._valid[token] = time.monotonic() + self.lifetime
        self.issued += 1
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime},
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    def _verify(self, form: dict[str, str]) -> str | None:
        """Why a private_key_jwt request is refused, or None (SMART Backend Services checks)."""
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return "assertion type"
        try:
            head, body, signature = form["client_assertion"].split(".")
            header, claims = json.loads(_b64url_decode(head)), json.loads(_b64url_decode(body))
            raw = _b64url_decode(signature)
        except (KeyError, ValueError):
            return "malformed assertion"
        key = self.keys.get(header.get("kid"))
        if key is None or header.get("typ") != "JWT":
            return "unknown kid"
        try:
            if header.get("alg") == "RS384" and isinstance(key, rsa.RSAPublicKey):
                key.verify(raw, f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA384())
            elif header.get("alg") == "ES384" and isinstance(key, ec.EllipticCurvePublicKey) and len(raw) == 96:
                der = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
                key.verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA384()))
            else:
                return "alg"
        except InvalidSignature:
            return "signature"
        now = time.time()
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "iss/sub"
        if claims.get("aud") != self.url:
            return "aud"
        if not isinstance(claims.get("exp"), int) or not now < claims["exp"] <= now + 300 + 5:
            return "exp"
        if not claims.get("jti") or claims["jti"] in self._jtis:
            return "jti reused"
        self._jtis.add(claims["jti"])
        self.assertions.append((header, claims))
        return None
