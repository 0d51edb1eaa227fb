"""A stand-in for HashiCorp Vault's transit engine (the endpoints radbridge uses), with real AES-GCM."""

from __future__ import annotations

import base64
import json
import os
import time

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TOKEN = "s.stub-token-DO-NOT-LEAK"


class TransitStub:
    def __init__(self, key: str = "radbridge", mount: str = "transit") -> None:
        self.key, self.mount = key, mount
        self.versions: dict[int, bytes] = {1: os.urandom(32)}
        self.created: dict[int, int] = {1: int(time.time())}
        self.min_decryption_version = 1
        self.fail_with: int | None = None  # answer every request with this status
        self.requests: list[httpx.Request] = []

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @staticmethod
    def _error(status: int, *errors: str) -> httpx.Response:
        return httpx.Response(status, json={"errors": list(errors)})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return self._error(self.fail_with, "Vault is sealed" if self.fail_with >= 500 else "bad request")
        if request.headers.get("X-Vault-Token") != TOKEN:
            return self._error(403, "permission denied")
        prefix = f"/v1/{self.mount}/"
        path = request.url.path
        if not path.startswith(prefix):
            return self._error(404, "no handler for route")
        path = path[len(prefix) :]
        body = json.loads(request.content) if request.content else {}
        latest = max(self.versions)
        if request.method == "GET" and path == f"keys/{self.key}":
            return httpx.Response(
                200,
                json={
                    "data": {
                        "name": self.key,
                        "type": "aes256-gcm96",
                        "keys": {str(v): ts for v, ts in self.created.items()},
                        "latest_version": latest,
                        "min_decryption_version": self.min_decryption_version,
                        "min_encryption_version": 0,
                    }
                },
            )
        if request.method != "POST":
            return self._error(405, "unsupported operation")
        if path == f"keys/{self.key}/rotate":
            self.versions[latest + 1] = os.urandom(32)
            self.created[latest + 1] = int(time.time())
            return httpx.Response(204)
        if path == f"keys/{self.key}/config":
            self.min_decryption_version = int(body["min_decryption_version"])
            return httpx.Response(204)
        aad = base64.b64decode(body.get("associated_data", ""))
        if path == f"encrypt/{self.key}":
            version = int(body.get("key_version") or latest)
            if version not in self.versions:
                return self._error(400, "invalid key version")
            nonce = os.urandom(12)
            sealed = AESGCM(self.versions[version]).encrypt(nonce, base64.b64decode(body["plaintext"]), aad)
            ct = f"vault:v{version}:" + base64.b64encode(nonce + sealed).decode()
            return httpx.Response(200, json={"data": {"ciphertext": ct, "key_version": version}})
        if path == f"decrypt/{self.key}":
            _, v, payload = body["ciphertext"].split(":", 2)
            version = int(v[1:])
            if version < self.min_decryption_version:
                return self._error(400, "ciphertext or signature version is disallowed by policy (too old)")
            raw = base64.b64decode(payload)
            try:
                plain = AESGCM(self.versions[version]).decrypt(raw[:12], raw[12:], aad)
            except (InvalidTag, KeyError):
                return self._error(400, "cipher: message authentication failed")
            return httpx.Response(200, json={"data": {"plaintext": base64.b64encode(plain).decode()}})
        return self._error(404, "no handler for route")
