"""Model servers for the HTTP model client tests, served for real by uvicorn on 127.0.0.1 in a
background thread (its own event loop, so a slow server never stalls the client under test):

- KServe: an Open Inference Protocol (KServe v2 REST) server, metadata + infer, with knobs for
  failures (status, Retry-After, garbage, wrong version, delay).
- TokenIssuer: an OAuth2 token endpoint (client credentials in the form body) issuing expiring
  tokens, counting them; model servers check bearer tokens against it.
- UploadServer: a study-upload server (multipart/related and STOW-RS) that parses every part with
  pydicom and records exactly what it received (raw bodies too, for PHI assertions); results sync,
  by poll, or by callback.

The multipart parser here is the standard library's email package, independent of the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import io
import itertools
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pydicom
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.connectors.http.asgi import Config, Server

WAIT = 10.0


@contextlib.contextmanager
def serve(app: Any, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve `app` on a free port of 127.0.0.1 (HTTPS with `tls`); yields the base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    config = Config(app, tls, host="127.0.0.1", port=port, http="h11", ws="none", lifespan="off",
                    log_config=None, access_log=False, timeout_graceful_shutdown=1)  # fmt: skip
    server = Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:] if value.startswith("Bearer ") else None


class TokenIssuer:
    """OAuth2 client credentials grant at POST /token. `rejected` counts requests a model server
    refused with 401; `revoke_all()` invalidates every token issued so far (as a key rollover would)."""

    def __init__(self, client_id: str, client_secret: str, lifetime: float = 3600, *, omit_token: bool = False) -> None:
        self.client_id, self.client_secret, self.lifetime = client_id, client_secret, lifetime
        self.omit_token = omit_token
        self.status: int | None = None  # force this status on the token endpoint
        self.issued = 0
        self.forms: list[dict[str, str]] = []
        self.rejected = 0
        self._valid: dict[str, float] = {}

    def route(self) -> Route:
        return Route("/token", self._token, methods=["POST"])

    async def _token(self, request: Request) -> Response:
        if self.status is not None:
            return JSONResponse({"error": "temporarily_unavailable"}, self.status)
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return JSONResponse({"error": "invalid_request"}, 400)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(), strict_parsing=True).items()}
        self.forms.append(form)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, 401, headers={"WWW-Authenticate": "Basic"})
        token = secrets.token_urlsafe(24)
        self._valid[token] = time.monotonic() + self.lifetime
        self.issued += 1
        answer: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.lifetime}
        if not self.omit_token:
            answer["access_token"] = token
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    def revoke_all(self) -> None:
        self._valid.clear()

    def check(self, request: Request) -> bool:
        token = _bearer(request)
        ok = token is not None and self._valid.get(token, 0.0) > time.monotonic()
        if not ok:
            self.rejected += 1
        return ok


def static_bearer(token: str) -> Callable[[Request], bool]:
    return lambda request: _bearer(request) == token


Check = Callable[[Request], bool]


class KServe:
    """An Open Inference Protocol server for one model. Knobs (set between requests):
    `status` + `headers`: answer infer with that status; `body`: answer infer with these raw bytes;
    `delay`: seconds before answering infer; `model_version`: the version named in answers (None:
    no model_version key); `scores`: the scores tensor."""

    def __init__(self, *, name: str = "ich-ct", version: str = "1.2.0", input_name: str = "input",
                 datatype: str = "FP32", shape: list[int] | None = None, outputs: tuple[str, ...] = ("scores",),
                 scores: list[float] | None = None, auth: Check | None = None) -> None:  # fmt: skip
        self.name, self.input_name, self.datatype = name, input_name, datatype
        self.shape = shape if shape is not None else [-1, 4, 8, 8]
        self.outputs = outputs
        self.model_version: str | None = version
        self.scores = scores if scores is not None else [0.93, 0.41, 0.07]
        self.auth = auth
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body: bytes | None = None
        self.delay = 0.0
        self.metadata_calls = 0
        self.requests: list[dict[str, Any]] = []  # infer request bodies as received
        self.answers: list[bytes] = []  # infer answers as sent

    def routes(self) -> list[Route]:
        return [Route("/v2/models/{name}", self._metadata, methods=["GET"]),
                Route("/v2/models/{name}/infer", self._infer, methods=["POST"])]  # fmt: skip

    def app(self, *extra: Route) -> Starlette:
        return Starlette(routes=[*self.routes(), *extra])

    async def _metadata(self, request: Request) -> Response:
        if self.auth is not None and not self.auth(request):
            return JSONResponse({"error": "unauthorized"}, 401)
        if request.path_params["name"] != self.name:
            return JSONResponse({"error": "unknown model"}, 404)
        self.metadata_calls += 1
        return JSONResponse({
            "name": self.name, "versions": [self.model_version or "1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": self.input_name, "datatype": self.datatype, "shape": self.shape}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, len(self.scores)]} for o in self.outputs],
        })  # fmt: skip

    async def _infer(self, request: Request) -> Response:
        if self.auth is not None and not self.auth(request):
            return JSONResponse({"error": "unauthorized"}, 401)
        body = json.loads(await request.body())
        self.requests.append(body)
        for tensor in body["inputs"]:  # what a real server checks before running the model
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            if tensor["name"] != self.input_name or tensor["datatype"] != self.datatype or len(tensor["data"]) != count:
                return JSONResponse({"error": "input does not match the model"}, 400)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            return JSONResponse({"error": "forced", "echo": body.get("id")}, self.status, headers=self.headers)
        if self.body is not None:
            answer = self.body
        else:
            document: dict[str, Any] = {"model_name": self.name, "id": body.get("id"), "outputs": [
                {"name": o, "datatype": "FP32", "shape": [1, len(self.scores)], "data": self.scores}
                for o in self.outputs]}  # fmt: skip
            if self.model_version is not None:
                document["model_version"] = self.model_version
            answer = json.dumps(document).encode()
        self.answers.append(answer)
        return Response(answer, media_type="application/json")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes  # the raw request body, exactly as it arrived
    parts: list[bytes] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)


def parse_related(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body of DICOM; ValueError when anything is off."""
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body,
                                       policy=email.policy.HTTP)  # fmt: skip
    if message.get_content_type() != "multipart/related" or message.get_param("type") != "application/dicom":
        raise ValueError("not multipart/related of application/dicom")
    if message.defects:
        raise ValueError(f"malformed multipart: {message.defects}")
    parts = []
    for part in message.iter_parts():
        if part.get_content_type() != "application/dicom":
            raise ValueError("a part is not application/dicom")
        parts.append(part.get_payload(decode=True))
    return parts


class UploadServer:
    """Routes: POST /sync, /poll, /callback (multipart/related study); POST /stow/studies (STOW-RS);
    GET /results/{n}. Knobs: `result` (the JSON document answered, or raw bytes); `pending` (202s
    before a polled result is ready, None: never); `result_url_in` ("location" or "json");
    `result_url` (override the URL named); `deliver` (called in the server's thread after the
    callback answer: deliver(job_id, result_bytes, token)); `stow_failures` (Failure Reason per failed
    instance); `stow_status` (force a status on STOW); `sync_status` (status of a /sync answer)."""

    def __init__(self, auth: Check | None = None) -> None:
        self.auth = auth
        self.result: dict[str, Any] | bytes = {"findings": []}
        self.pending: int | None = 0
        self.result_url_in = "location"
        self.result_url: str | None = None
        self.deliver: Callable[[str, bytes, str], object] | None = None
        self.delivered: list[object] = []  # what deliver returned or raised
        self.stow_failures: list[int] = []
        self.stow_status: int | None = None
        self.sync_status = 200
        self.received: list[Received] = []
        self.polls = 0
        self._jobs = itertools.count(1)
        self._waiting: dict[str, int] = {}

    def app(self, *extra: Route) -> Starlette:
        return Starlette(routes=[
            *extra,
            Route("/{mode:str}", self._upload, methods=["POST"]),
            Route("/stow/studies", self._stow, methods=["POST"]),
            Route("/results/{n}", self._poll, methods=["GET"]),
        ])  # fmt: skip

    def _result_bytes(self) -> bytes:
        return self.result if isinstance(self.result, bytes) else json.dumps(self.result).encode()

    async def _receive(self, request: Request) -> Received | Response:
        if self.auth is not None and not self.auth(request):
            return JSONResponse({"error": "unauthorized"}, 401)
        body = await request.body()
        got = Received(request.url.path, dict(request.headers), body)
        self.received.append(got)
        try:
            got.parts = parse_related(request.headers.get("content-type", ""), body)
            for part in got.parts:
                got.sop_instance_uids.append(str(pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID))
        except Exception:  # anything that is not a well-formed study of Part 10 files
            return JSONResponse({"error": "not a multipart/related study of DICOM files"}, 400)
        return got

    def _later(self, request: Request, status: int, document: dict[str, Any] | None = None,
               media_type: str = "application/json") -> Response:  # fmt: skip
        """The 'accepted, result later' answer: a result URL to poll, or a callback afterwards."""
        callback = request.headers.get("x-radbridge-callback-id")
        if callback is not None:
            token = request.headers.get("x-radbridge-callback-token", "")
            task = BackgroundTask(self._call_back, callback, token) if self.deliver else None
            return Response(json.dumps(document or {}), status, media_type=media_type, background=task)
        n = next(self._jobs)
        self._waiting[str(n)] = self.pending if self.pending is not None else -1
        url = self.result_url or f"/results/{n}"
        if self.result_url_in == "location" or document is not None:
            return Response(json.dumps(document or {}), status, headers={"Location": url}, media_type=media_type)
        return JSONResponse({"result_url": url}, status)

    async def _call_back(self, job_id: str, token: str) -> None:
        await asyncio.sleep(0.05)
        assert self.deliver is not None
        try:
            self.delivered.append(self.deliver(job_id, self._result_bytes(), token))
        except Exception as exc:  # recorded for the test to assert on
            self.delivered.append(exc)

    async def _upload(self, request: Request) -> Response:
        got = await self._receive(request)
        if isinstance(got, Response):
            return got
        mode = request.path_params["mode"]
        if mode == "sync":
            return Response(self._result_bytes(), self.sync_status, media_type="application/json")
        if mode in ("poll", "callback"):
            return self._later(request, 202)
        return JSONResponse({"error": "unknown mode"}, 404)

    async def _poll(self, request: Request) -> Response:
        if self.auth is not None and not self.auth(request):
            return JSONResponse({"error": "unauthorized"}, 401)
        self.polls += 1
        left = self._waiting.get(request.path_params["n"])
        if left is None:
            return JSONResponse({"error": "unknown result"}, 404)
        if left != 0:
            self._waiting[request.path_params["n"]] = left - 1 if left > 0 else -1
            return JSONResponse({"status": "running"}, 202)
        return Response(self._result_bytes(), 200, media_type="application/json")

    async def _stow(self, request: Request) -> Response:
        if request.headers.get("accept") != "application/dicom+json":
            return JSONResponse({"error": "STOW-RS answers application/dicom+json"}, 406)
        got = await self._receive(request)
        if isinstance(got, Response):
            return got
        if self.stow_status is not None:
            return Response(b"", self.stow_status)
        failed = got.sop_instance_uids[: len(self.stow_failures)]
        stored = got.sop_instance_uids[len(self.stow_failures) :]
        document: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}}  # fmt: skip
        if failed:
            document["00081198"] = {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
                for uid, reason in zip(failed, self.stow_failures, strict=True)]}  # fmt: skip
        status = 409 if failed and not stored else 202 if failed else 200
        if status != 200:
            return Response(json.dumps(document), status, media_type="application/dicom+json")
        return self._later(request, 200, document, media_type="application/dicom+json")
