"""Orthanc's change feed as a notification source: polls REST `/changes` and emits one
engine.dicom.Notification per StableStudy (and, if asked, NewStudy) change.

The feed position (the last change Seq handled) lives in the channel's sealed state and moves only
after the engine accepted the notification, so a restart resumes exactly where it stopped: no change
lost, none handed over twice (a stop waits for a notification in flight). Orthanc raises StableStudy
again when a late instance arrives; each is a new change with its own Seq and is passed on: telling
repeats apart is the correlator's job. Logs and audit entries carry the Orthanc address, HTTP status
codes, Seq numbers and counts — never study UIDs, accession numbers or patient ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.tls import ClientTls, HttpAuth
from engine.core.component import ComponentContext, Inbound, Outcome, Sink
from engine.core.registry import register
from engine.dicom import Notification
from engine.security.tls import client_context, client_context_for

log = logging.getLogger("radbridge.orthanc")
# httpx logs every request URL at INFO; ours carry only Orthanc ids, but keep the habit of never
# letting a library print URLs into the engine log.
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

STATE_KEY = "last_seq"
_EVENTS: dict[str, Literal["study.stable", "study.available"]] = {
    "StableStudy": "study.stable",
    "NewStudy": "study.available",
}
_STOP_GRACE_S = 10.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrthancChangesConfig(_Strict):
    base_url: str = Field(description="Orthanc's REST root, e.g. https://pacs.example.org:8042.")
    auth: HttpAuth | None = Field(None, description="Credentials: `{username, password}` or `{bearer}`.")
    tls: ClientTls | None = Field(
        None, description="TLS settings for an https base_url (always TLS 1.2 or later; system CAs by default)."
    )
    events: list[Literal["StableStudy", "NewStudy"]] = Field(
        default_factory=lambda: ["StableStudy"],
        min_length=1,
        description="Orthanc change types to pass on: StableStudy -> study.stable, NewStudy -> study.available.",
    )
    start: Literal["now", "beginning"] = Field(
        "now",
        description="Where a channel with no saved position begins: 'now' (only changes from then on) or "
        "'beginning' (every change Orthanc still holds).",
    )
    poll_s: float = Field(5.0, gt=0, description="Seconds between polls once the feed is read to its end.")
    batch: int = Field(100, ge=1, le=1000, description="Changes asked for per request (`limit`).")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of each HTTP request.")
    max_backoff_s: float = Field(
        60.0, gt=0, description="Longest wait between attempts while Orthanc is unreachable or refuses us."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("base_url must not hold credentials: use auth")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_needs_https(self) -> OrthancChangesConfig:
        if self.tls is not None and not self.base_url.startswith("https://"):
            raise ValueError("tls is set but base_url is not https://")
        return self


def _where(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def tls_context(config: OrthancChangesConfig, ctx: ComponentContext) -> ssl.SSLContext | None:
    """The client TLS context for an https base_url (ConfigError when its files are unusable)."""
    if not config.base_url.startswith("https://"):
        return None
    return client_context_for(config.tls, ctx.root, f"orthanc-changes source of {ctx.channel}")


def http_client(config: OrthancChangesConfig, tls: ssl.SSLContext | None) -> httpx.AsyncClient:
    """An AsyncClient for Orthanc's REST API with the configured credentials and TLS."""
    auth: httpx.Auth | None = None
    headers = {"Accept": "application/json"}
    if config.auth is not None and config.auth.bearer is not None:
        headers["Authorization"] = f"Bearer {config.auth.bearer.get_secret_value()}"
    elif config.auth is not None and config.auth.username is not None and config.auth.password is not None:
        auth = httpx.BasicAuth(config.auth.username, config.auth.password.get_secret_value())
    return httpx.AsyncClient(
        base_url=config.base_url, auth=auth, headers=headers, verify=tls if tls is not None else client_context(),
        timeout=config.timeout_s, trust_env=False,
    )  # fmt: skip


class _SinkUnavailable(Exception):
    """The engine could not store a notification: stop the batch, retry from the same Seq."""


class _Refused(Exception):
    """Orthanc answered 401/403."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _MemoryState:
    """Used only when the runtime gives no state store: the position then does not survive a restart."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)

    async def put(self, name: str, value: bytes) -> None:
        self.values[name] = value


@register("source", "orthanc-changes")
class OrthancChangesSource:
    """Polls Orthanc's change log and hands the sink one notification per study change.

    Orthanc unreachable, failing (5xx) or refusing the credentials (401/403, audited as
    pacs.unauthorized once per episode) is logged and retried with a doubling backoff up to
    max_backoff_s; the source never stops on its own. A study deleted before it was read (404) is
    skipped. A sink outcome "unavailable" ends the batch; the same change is offered again later.
    """

    Config = OrthancChangesConfig

    def __init__(self, config: OrthancChangesConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self.peer = _where(config.base_url)
        self.state = ctx.state if ctx.state is not None else _MemoryState()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._sink: Sink | None = None
        self._stopping = asyncio.Event()
        self._in_sink = False
        self._refused = False  # inside an episode of 401/403 answers (audited once)
        self._checked_reset = False
        self.emitted = 0  # notifications handed to the sink (for tests and metrics)
        self._tls = tls_context(config, ctx)  # unusable TLS files fail the build, before anything starts

    async def start(self, sink: Sink) -> list[str]:
        if self.ctx.state is None:
            log.warning("orthanc-changes %s: no state store; the feed position will not survive a restart",
                        self.ctx.channel)  # fmt: skip
        self._sink = sink
        self._stopping.clear()
        self._client = http_client(self.config, self._tls)
        self._task = asyncio.create_task(self._run(), name=f"orthanc-changes:{self.ctx.channel}")
        return [f"orthanc-changes {self.config.base_url}/changes ({', '.join(self.config.events)})"]

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            if self._in_sink:  # let the notification in flight finish and its position be saved
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the loop

    async def _run(self) -> None:
        cfg = self.config
        delay = cfg.poll_s
        while not self._stopping.is_set():
            try:
                await self._drain()
                delay = cfg.poll_s
                if self._refused:
                    self._refused = False
                    log.info("orthanc-changes %s: %s accepts the credentials again", self.ctx.channel, self.peer)
            except _SinkUnavailable:
                delay = min(max(delay, cfg.poll_s) * 2, cfg.max_backoff_s)
                log.warning("orthanc-changes %s: the engine could not store a notification; retrying in %g s",
                            self.ctx.channel, delay)  # fmt: skip
            except _Refused as exc:
                delay = min(max(delay, cfg.poll_s) * 2, cfg.max_backoff_s)
                log.warning("orthanc-changes %s: %s answered HTTP %d (credentials refused); retrying in %g s",
                            self.ctx.channel, self.peer, exc.status, delay)  # fmt: skip
                if not self._refused:
                    self._refused = True
                    await self._audit("pacs.unauthorized", status=exc.status)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self._checked_reset = False  # Orthanc may come back with a new database
                delay = min(max(delay, cfg.poll_s) * 2, cfg.max_backoff_s)
                log.warning("orthanc-changes %s: %s unavailable (%s); retrying in %g s",
                            self.ctx.channel, self.peer, _describe(exc), delay)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a feed must never die: log (type only) and go on
                delay = min(max(delay, cfg.poll_s) * 2, cfg.max_backoff_s)
                log.error("orthanc-changes %s: unexpected %s; retrying in %g s",
                          self.ctx.channel, type(exc).__name__, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _get(self, path: str, **params: Any) -> httpx.Response:
        assert self._client is not None
        response = await self._client.get(path, params=params)
        if response.status_code in (401, 403):
            raise _Refused(response.status_code)
        return response

    async def _json(self, path: str, **params: Any) -> Any:
        response = await self._get(path, **params)
        response.raise_for_status()
        return response.json()

    def _saved(self) -> int | None:
        raw = self.state.get(STATE_KEY)
        return int(raw.decode()) if raw else None

    async def _save(self, seq: int) -> None:
        await self.state.put(STATE_KEY, str(seq).encode())

    async def _position(self) -> int:
        saved = self._saved()
        if saved is None:
            if self.config.start == "beginning":
                return 0
            last = int((await self._json("/changes", last=""))["Last"])
            await self._save(last)
            log.info("orthanc-changes %s: no saved position; starting after change %d", self.ctx.channel, last)
            return last
        if not self._checked_reset:
            # An Orthanc whose database was replaced numbers its changes from 1 again: a saved
            # position beyond its last change would otherwise hide every new change for a long time.
            last = int((await self._json("/changes", last=""))["Last"])
            self._checked_reset = True
            if last < saved:
                log.warning("orthanc-changes %s: %s's change log ends at %d, before the saved %d (new database?); "
                            "reading it from the beginning", self.ctx.channel, self.peer, last, saved)  # fmt: skip
                await self._audit("pacs.feed_reset", outcome="failure", saved=saved, last=last)
                await self._save(0)
                return 0
        return saved

    async def _drain(self) -> None:
        """Read the feed from the saved position to its end, handing over each wanted change."""
        since = await self._position()
        while not self._stopping.is_set():
            page = await self._json("/changes", since=since, limit=self.config.batch)
            for change in page["Changes"]:
                if self._stopping.is_set():
                    return
                seq = int(change["Seq"])
                if change.get("ResourceType") == "Study" and change.get("ChangeType") in self.config.events:
                    await self._handle(change, seq)
                since = seq
            since = max(since, int(page["Last"]))
            if since != self._saved():  # skip past the changes nobody wants, so a restart skips them too
                await self._save(since)
            if page.get("Done", True):
                return

    async def _handle(self, change: dict[str, Any], seq: int) -> None:
        study_id = str(change["ID"])
        response = await self._get(f"/studies/{study_id}")
        if response.status_code == 404:
            log.info("orthanc-changes %s: change %d names a study already deleted; skipped", self.ctx.channel, seq)
            await self._save(seq)
            return
        response.raise_for_status()
        study = response.json()
        tags = study.get("MainDicomTags") or {}
        patient = study.get("PatientMainDicomTags") or {}
        study_uid = str(tags.get("StudyInstanceUID") or "").strip()
        if not study_uid:
            log.warning("orthanc-changes %s: change %d: study without StudyInstanceUID; skipped", self.ctx.channel, seq)
            await self._save(seq)
            return
        accession = str(tags.get("AccessionNumber") or "").strip()
        notification = Notification(
            event=_EVENTS[change["ChangeType"]],
            study_uid=study_uid,
            source="orthanc-changes",
            accessions=(accession,) if accession else (),
            patient_id=str(patient.get("PatientID") or "").strip(),
            pacs_id=study_id,
        )
        inbound = Inbound(
            raw=notification.to_json(), kind="notification", peer=self.peer, decoded=notification,
            dedup=f"orthanc:{seq}", type=notification.event,
        )  # fmt: skip
        assert self._sink is not None
        self._in_sink = True
        try:
            outcome: Outcome = await self._sink(inbound)
            if outcome.status == "unavailable":
                raise _SinkUnavailable()
            await self._save(seq)  # only now is the change handled: a crash before this re-offers it
        finally:
            self._in_sink = False
        self.emitted += 1
        if outcome.status not in ("accepted", "duplicate", "filtered"):
            log.warning("orthanc-changes %s: change %d: notification %s (%s)", self.ctx.channel, seq,
                        outcome.status, outcome.message_id)  # fmt: skip

    async def _audit(self, action: str, outcome: str = "denied", **detail: Any) -> None:
        try:
            await self.ctx.audit(
                action, actor=f"peer:{self.peer}", peer=self.peer, outcome=outcome,
                detail={"channel": self.ctx.channel, "source": "orthanc-changes", **detail},
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - auditing must not stop the feed; it is logged
            log.error("orthanc-changes %s: audit of %s failed (%s)", self.ctx.channel, action, type(exc).__name__)


def _describe(exc: Exception) -> str:
    """A reason without URLs or bodies: the exception type, or the HTTP status."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__
