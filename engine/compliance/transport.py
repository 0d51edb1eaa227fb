"""Evidence for §164.312(e)(1) transmission security and §164.312(d) entity authentication: every socket
the configuration opens, read from the validated configuration (what `radbridge run` would start).

Listeners: engine.yaml `listeners` (API, web) and every enabled channel source that listens (MLLP,
DICOM, webhook). Clients: channel destinations and polling sources (MLLP, DICOM, FHIR, DICOMweb,
Orthanc), inference model servers and their token endpoints, the audit syslog forwarder and Vault.
Each is judged on its own: TLS -> pass; plaintext to or on a loopback address -> attention (it never
leaves the host, but nothing stops a later edit from pointing it elsewhere); plaintext anywhere else
-> fail.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from engine.compliance.evidence import Evidence, Item, Status, worst
from engine.config import Project
from engine.core import registry


@dataclass(frozen=True)
class Endpoint:
    where: str  # e.g. "channel ris-orders source (mllp)"
    role: Literal["listener", "client"]
    host: str
    port: int | None
    tls: bool
    min_version: str | None  # lowest TLS version accepted, when TLS
    mutual: bool  # listener: client certificates required; client: presents a certificate
    peers: str  # how a listener authenticates peers: "client certificate", "allow-list", ...; "" for anyone

    def judge(self) -> tuple[Status, str]:
        if self.tls:
            mutual = ", mutual" if self.mutual else ""
            return "pass", f"TLS {self.min_version}{'+' if self.min_version == '1.2' else ' only'}{mutual}"
        if is_loopback(self.host):
            return "attention", "plaintext on the loopback interface"
        return "fail", "plaintext over the network"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listens(kind: str) -> bool:
    component = registry.get("source", kind)
    return component is not None and getattr(component.cls, "listens", True) is not False


def _peers(config: BaseModel) -> str:
    """How a channel listener tells who is connecting: client certificates, an allow-list, credentials."""
    ways = []
    tls = getattr(config, "tls", None)
    if tls is not None and getattr(tls, "ca", None):
        ways.append("client certificate")
    if getattr(config, "allow", None):
        ways.append("allow-list")
    auth = getattr(config, "auth", None)
    if auth is not None and (getattr(auth, "bearer", None) or getattr(auth, "hmac", None)):
        ways.append("credential")
    return " + ".join(ways)


def _listener(where: str, host: str, port: int, tls: Any, peers: str) -> Endpoint:
    on = tls is not None
    return Endpoint(where, "listener", host, port, on, tls.min_version if on else None,
                    on and getattr(tls, "ca", None) is not None, peers)  # fmt: skip


def _url_client(where: str, url: str, tls: Any) -> Endpoint:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    min_version = (tls.min_version if tls is not None else "1.2") if secure else None
    mutual = secure and tls is not None and getattr(tls, "cert", None) is not None
    return Endpoint(where, "client", parts.hostname or "", port, secure, min_version, mutual, "")


def _client(where: str, config: BaseModel) -> list[Endpoint]:
    """The connection a destination or polling source makes, by its fields (URL or host/port)."""
    out: list[Endpoint] = []
    tls = getattr(config, "tls", None)
    url = getattr(config, "base_url", None) or getattr(config, "url", None)
    if isinstance(url, str):
        out.append(_url_client(where, url, tls))
    else:
        host, port = getattr(config, "host", None), getattr(config, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            on = tls is not None
            mutual = on and getattr(tls, "cert", None) is not None
            out.append(Endpoint(where, "client", host, port, on, tls.min_version if on else None, mutual, ""))
    auth = getattr(config, "auth", None)
    token_url = getattr(getattr(auth, "oauth2", None), "token_url", None)
    if isinstance(token_url, str):
        out.append(_url_client(f"{where} token endpoint", token_url, None))
    return out


def endpoints(project: Project) -> tuple[list[Endpoint], list[str]]:
    """Every listener and client the project configures, and the disabled channels left out."""
    found: list[Endpoint] = []
    for listener in project.engine.listeners:
        found.append(_listener(f"engine listener {listener.name} ({listener.kind})", listener.host, listener.port,
                               listener.tls, ""))  # fmt: skip
    skipped = []
    for channel in project.channels:
        name = channel.config.name
        if not channel.config.enabled:
            skipped.append(name)
            continue
        source = channel.source
        port = getattr(source, "port", None)
        if _listens(channel.source_kind) and isinstance(port, int) and not isinstance(port, bool):
            host = str(getattr(source, "host", "0.0.0.0"))
            found.append(_listener(f"channel {name} source ({channel.source_kind})", host, port,
                                   getattr(source, "tls", None), _peers(source)))  # fmt: skip
        else:
            found += _client(f"channel {name} source ({channel.source_kind})", source)
        for model in getattr(source, "models", None) or []:  # inference channels: model servers
            found += _client(f"channel {name} model {model.name}@{model.version} ({model.kind})", model)
        for dest in channel.destinations:
            found += _client(f"channel {name} destination {dest.name} ({dest.kind})", dest.config)
    forward = project.engine.audit.forward
    if forward is not None:  # syslog over TLS is the only transport the forwarder has
        found.append(Endpoint("audit forwarder (syslog)", "client", forward.host, forward.port, True, "1.2",
                              forward.cert is not None, ""))  # fmt: skip
    transit = project.engine.keys.vault_transit
    if project.engine.keys.kek == "vault-transit" and transit is not None:
        found.append(_url_client("key management (Vault transit)", transit.addr, None))
    return found, skipped


def _summary(role: str, judged: list[tuple[Endpoint, Status, str]]) -> str:
    if not judged:
        return f"no {role.replace('(s)', 's')} configured"
    fails = [e.where for e, s, _ in judged if s == "fail"]
    loop = [e.where for e, s, _ in judged if s == "attention"]
    tls = sum(1 for e, _, _ in judged if e.tls)
    mutual = sum(1 for e, _, _ in judged if e.mutual)
    text = f"{len(judged)} {role}: {tls} over TLS ({mutual} mutual)"
    if fails:
        text += f"; plaintext over the network: {', '.join(fails)}"
    if loop:
        text += f"; plaintext on loopback: {', '.join(loop)}"
    return text


def _transmission(ev: Evidence, role: Literal["listener", "client"], item_id: str, title: str) -> Item:
    found, skipped = endpoints(ev.ctx.project)
    judged = [(e, *e.judge()) for e in found if e.role == role]
    details: dict[str, Any] = {
        e.where: {**{k: v for k, v in asdict(e).items() if k not in ("where", "role", "peers")}, "status": s, "why": w}
        for e, s, w in judged
    }
    if skipped:
        details["disabled channels (not started)"] = skipped
    status = worst([s for _, s, _ in judged])
    what = "listener(s)" if role == "listener" else "outbound connection(s)"
    return Item(item_id, "transmission", "§164.312(e)(1), (e)(2)(ii)", title, status, _summary(what, judged), details)


def transmission_listeners(ev: Evidence) -> Item:
    return _transmission(ev, "listener", "transmission-listeners", "Transmission security: listeners")


def transmission_clients(ev: Evidence) -> Item:
    return _transmission(ev, "client", "transmission-clients", "Transmission security: outbound connections")


def peer_authentication(ev: Evidence) -> Item:
    """Channel listeners reachable from the network identify who connects (client certificates, an
    allow-list of addresses or AE titles, or a credential); users of the API sign in (the users items)."""
    found, _ = endpoints(ev.ctx.project)
    channel_listeners = [e for e in found if e.role == "listener" and e.where.startswith("channel ")]
    details: dict[str, Any] = {e.where: {"host": e.host, "port": e.port, "peers": e.peers or "anyone"}
                               for e in channel_listeners}  # fmt: skip
    open_ = [e.where for e in channel_listeners if not e.peers and not is_loopback(e.host)]
    if open_:
        why = f"accepts any peer from the network: {', '.join(open_)} (set tls.ca for client certificates, or allow)"
        status: Status = "attention"
    elif channel_listeners:
        why = f"{len(channel_listeners)} channel listener(s), each identifying its peers or bound to loopback"
        status = "pass"
    else:
        why, status = "no channel listens for peers", "pass"
    return Item("peer-authentication", "authentication", "§164.312(d)", "Entity authentication of peer systems",
                status, why, details)  # fmt: skip
