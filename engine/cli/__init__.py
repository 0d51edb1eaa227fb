"""The `radbridge` command. Output carries ids, states and counts; content only with --decrypt, audited."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import typer
import uvloop

from engine import __version__
from engine.cli.common import ROOT, actor, app, context, fail, guard, setup_logging
from engine.config import load_project

keys_app = typer.Typer(help="Key material: create, inspect, rotate, retire.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: verify the chain, read recent entries, export.", no_args_is_help=True)
messages_app = typer.Typer(help="Stored messages: list, show, reprocess.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
studies_app = typer.Typer(help="Studies being assembled and correlated: list, show.", no_args_is_help=True)
app.add_typer(messages_app, name="messages")
app.add_typer(studies_app, name="studies")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def run(root: Path = ROOT) -> None:
    """Start the engine in the foreground on the project's configuration; prints what it listens on."""
    from engine.runtime.context import open_context
    from engine.runtime.lint import lint_all
    from engine.runtime.serve import serve
    from engine.web.app import for_engine

    setup_logging()
    problems = lint_all([], root)  # a bad channel or mapping stops the start, before anything listens
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(2)
    ctx = guard(lambda: open_context(root, create_dev_key=True))
    try:
        # uvloop: the same asyncio API with libuv underneath; it takes a large share of the per-message
        # socket and scheduling cost off the ingest path.
        uvloop.run(serve(ctx, for_engine, announce=lambda line: typer.echo(line)))
    finally:
        ctx.close()


@app.command()
def lint(
    paths: list[Path] = typer.Argument(None, help="Files or folders; default: the whole project."), root: Path = ROOT
) -> None:
    """Check engine, channel and mapping files (and .hl7 samples) without starting anything;
    prints file:line:col: message."""
    from engine.runtime.lint import lint_all

    diagnostics = lint_all([Path(p) for p in paths or []], root)
    for d in diagnostics:
        typer.echo(str(d))
    if diagnostics:
        typer.echo(f"{len(diagnostics)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo("ok")


@app.command("test")
def test_channels(
    paths: list[Path] = typer.Argument(None, help="Case files or folders; default: tests/channels."),
    root: Path = ROOT,
) -> None:
    """Run channel test cases (*_test.yaml) through the real pipeline with mocked destinations."""
    from engine.runtime.channel_tests import case_files, run_file

    files = case_files([Path(p) for p in paths or []], root.resolve())
    if not files:
        fail("no *_test.yaml files found")
    total, failures = 0, []
    for path in files:
        ran, failed = guard(lambda path=path: asyncio.run(run_file(path.resolve(), root.resolve())))
        total += ran
        failures += failed
    for failure in failures:
        typer.echo(str(failure))
    failed = len({(f.path, f.line) for f in failures})
    typer.echo(f"{total - failed} passed, {failed} failed")
    if failures:
        raise typer.Exit(1)


@app.command()
def send(
    files: list[Path] = typer.Argument(..., help="HL7 files: one or many messages each, FHS/BHS batches accepted."),
    to: str = typer.Option(..., "--to", help="host:port of the MLLP listener."),
    tls_ca: Path | None = typer.Option(None, help="Use TLS, verifying the server against this CA (PEM)."),
    tls_cert: Path | None = typer.Option(None, help="Client certificate (PEM) for mutual TLS."),
    tls_key: Path | None = typer.Option(None, help="Private key of the client certificate (PEM)."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for each ACK."),
) -> None:
    """Send HL7 messages over MLLP and print each ACK: control id, code, error code, time. Never content."""
    from engine.connectors.mllp import send_messages
    from engine.hl7v2.batch import BatchError, split_messages
    from engine.security.tls import client_context

    host, _, port = to.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--to must be host:port, got {to!r}")
    messages: list[bytes] = []
    for path in files:
        try:
            messages += split_messages(path.read_bytes())
        except (OSError, BatchError) as exc:
            fail(f"{path}: {exc}")
    tls = None
    if tls_ca or tls_cert:
        tls = client_context(str(tls_ca) if tls_ca else None, tls_cert and str(tls_cert), tls_key and str(tls_key))
    results = guard(lambda: asyncio.run(send_messages(messages, host, int(port), tls=tls, timeout_s=timeout)))
    for n, r in enumerate(results, 1):
        error = f" ERR {r.error_code}" if r.error_code else ""
        note = f" ({r.note})" if r.note else ""
        typer.echo(f"{n}/{len(messages)} {r.control_id or '-'} {r.code or 'no ACK'}{error} {r.elapsed_ms:.1f} ms{note}")
    if len(results) < len(messages) or any(r.code not in ("AA", "CA") for r in results):
        raise typer.Exit(1)


@app.command("purge")
def purge_now(root: Path = ROOT) -> None:
    """Run retention now: purge messages past their channel's retention (crypto-shredding their keys),
    keep the audit trail, and print what went."""
    from engine.runtime.serve import run_retention

    ctx = context(root)
    try:
        report = guard(lambda: run_retention(ctx, actor()))
    finally:
        ctx.close()
    for channel in report.channels:
        typer.echo(f"{channel.channel}: {channel.messages} message(s) purged (older than {channel.days} days), "
                   f"{channel.kept_queued} kept while queued")  # fmt: skip
    typer.echo(f"{report.messages} message(s) purged; freed space scrubbed: {'yes' if report.scrubbed else 'NO'}")


@app.command()
def backup(dest: Path, root: Path = ROOT) -> None:
    """Write a consistent backup of the store (database and blob folder) to DEST while the engine runs.
    The data stays encrypted; the keyring is NOT in it: export that apart with `keys export`."""
    from engine.store.backup import backup as take_backup

    ctx = context(root)
    try:
        info = guard(lambda: take_backup(ctx, dest, actor=actor()))
    finally:
        ctx.close()
    typer.echo(f"backup of the {info.store} store written to {dest}: {info.messages} message(s), "
               f"{info.audit_entries} audit entries, {info.blobs} blob(s)")  # fmt: skip


@app.command()
def restore(
    src: Path,
    root: Path = ROOT,
    keys: Path | None = typer.Option(None, help="Also import this exported keyring (see `keys export`)."),
    passphrase_env: str = typer.Option("RADBRIDGE_KEY_PASSPHRASE", help="Environment variable with its passphrase."),
) -> None:
    """Restore a backup into this project's store, which must be empty (and with --keys, its keyring)."""
    from engine.runtime.context import load_keyring, store_url
    from engine.store.backup import restore as do_restore

    if keys is not None:  # the keyring first: the backup's signature is checked with it
        keys_import(keys, root, passphrase_env)
    project = guard(lambda: load_project(root))
    keyring = guard(lambda: load_keyring(project))
    info = guard(lambda: do_restore(src, project.root, store_url(project), verify_key=keyring.verify_key))
    ctx = context(root)  # a restore test is evidence too (compliance report: restore test)
    try:
        ctx.audit.record("store.restored", actor=actor(), detail={"messages": info.messages,
                                                                   "audit_entries": info.audit_entries})  # fmt: skip
    finally:
        ctx.close()
    typer.echo(f"restored {info.messages} message(s) and {info.audit_entries} audit entries from {src}")


def _passphrase(env: str) -> str:
    value = os.environ.get(env)
    if not value:
        fail(f"environment variable {env} holding the passphrase is not set")
    return value


PASSPHRASE = typer.Option("RADBRIDGE_KEY_PASSPHRASE", help="Environment variable holding the passphrase.")


@keys_app.command("export")
def keys_export(dest: Path, root: Path = ROOT, passphrase_env: str = PASSPHRASE) -> None:
    """Export the keyring sealed under a passphrase (scrypt, AES-256-GCM), to keep apart from backups."""
    from engine.runtime.context import load_keyring
    from engine.security.key_export import export_keyring

    project = guard(lambda: load_project(root))
    sealed = guard(lambda: export_keyring(load_keyring(project), _passphrase(passphrase_env)))
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{dest} already exists")
    with os.fdopen(fd, "wb") as out:
        out.write(sealed)
    ctx = context(root)  # the escrow copy is evidence (compliance report: key escrow)
    try:
        ctx.audit.record("keys.exported", actor=actor(), detail={"kek": ctx.keyring.kek_id})
    finally:
        ctx.close()
    typer.echo(f"keyring exported to {dest}, sealed under the passphrase in ${passphrase_env}")


@keys_app.command("import")
def keys_import(src: Path, root: Path = ROOT, passphrase_env: str = PASSPHRASE) -> None:
    """Import an exported keyring into the configured key file (mode 0600), e.g. after a restore."""
    from engine.runtime.context import _under
    from engine.security import keyring
    from engine.security.key_export import import_keyring

    project = guard(lambda: load_project(root))
    ring = guard(lambda: import_keyring(src.read_bytes(), _passphrase(passphrase_env)))
    path = _under(project.root, project.engine.keys.file)
    guard(lambda: keyring.write_file(ring, path))
    typer.echo(f"keyring imported to {path}")


# -- keys --------------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init(root: Path = ROOT, force: bool = typer.Option(False, help="Replace an existing key file.")) -> None:
    """Create a production keyring at the configured key file (mode 0600)."""
    from engine.runtime.context import _under
    from engine.security import keyring

    project = guard(lambda: load_project(root))
    if project.engine.keys.source != "file":
        fail("keys.source is not 'file'; put the keyring JSON in the environment variable instead")
    path = _under(project.root, project.engine.keys.file)
    ring = keyring.generate(dev=False)
    guard(lambda: keyring.write_file(ring, path, replace=force))
    typer.echo(f"created keyring {path} (KEK {ring.kek_id} v{ring.kek_active}, signing key {ring.signing_key_id})")
    typer.echo("back it up apart from the data: without it, nothing stored can be read")


@keys_app.command("status")
def keys_status(root: Path = ROOT) -> None:
    """Show KEK versions, their ages and how many records each wraps (never key material)."""
    from engine.store import rotation

    ctx = context(root)
    try:
        info = ctx.keyring.describe()
        state = rotation.status(ctx.db, ctx.vault.kek)
    finally:
        ctx.close()
    typer.echo(f"keyring: {info['source']}{'  (DEVELOPMENT KEY: not for patient data)' if info['dev'] else ''}")
    typer.echo(f"checkpoint signing key: {info['signing_key_id']}")
    for v in state["versions"]:
        marks = (" active" if v["active"] else "") + (" retired" if v["retired"] else "")
        days = v["age_seconds"] / 86400 if v.get("age_seconds") is not None else None
        age = f", {days:.0f} day(s) old" if days is not None else ""
        typer.echo(f"KEK {state['kek_id']} v{v['version']}{marks}: created {v['created_at']}{age}, "
                   f"wraps {v['records']} record(s)")  # fmt: skip
    for kek_id, count in (state.get("other_keks") or {}).items():
        typer.echo(f"other KEK {kek_id}: wraps {count} record(s)")


@keys_app.command("rotate")
def keys_rotate(
    root: Path = ROOT,
    rewrap_only: bool = typer.Option(False, help="Do not make a new version; re-wrap onto the active one."),
    batch_size: int = typer.Option(500, help="Data keys re-wrapped per transaction."),
) -> None:
    """Make a new KEK version and re-wrap every data key onto it, in batches, while the engine runs.
    Content is not re-encrypted. Restart (or reload) running engines so new records use the new version."""
    from engine.store import rotation

    ctx = context(root)
    try:
        version = ctx.vault.kek.active if rewrap_only else guard(ctx.vault.kek.rotate)
        count = guard(lambda: rotation.rotate(ctx.db, ctx.vault, batch_size=batch_size))
        ctx.audit.record("keys.rotated", actor=actor(), detail={"kek": ctx.vault.kek.kek_id, "version": version,
                                                                  "rewrapped": count})  # fmt: skip
    finally:
        ctx.close()
    typer.echo(f"KEK {ctx.vault.kek.kek_id} v{version} active; {count} data key(s) re-wrapped")


@keys_app.command("retire")
def keys_retire(version: int, root: Path = ROOT) -> None:
    """Retire a KEK version that wraps no record any more; it can no longer unwrap anything."""
    from engine.store import rotation

    ctx = context(root)
    try:
        guard(lambda: rotation.retire(ctx.db, ctx.vault.kek, version))
        ctx.audit.record("keys.retired", actor=actor(), detail={"kek": ctx.vault.kek.kek_id, "version": version})
    finally:
        ctx.close()
    typer.echo(f"KEK {ctx.vault.kek.kek_id} v{version} retired")


# -- audit -------------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(root: Path = ROOT) -> None:
    """Check every node's hash chain and signed checkpoints; exit 1 at the first broken entry."""
    from engine.audit.verify import verify

    ctx = context(root)
    try:
        result = verify(ctx.db, ctx.keyring.verify_key, ctx.keyring.signing_key_id)
        outcome = "success" if result.ok else "failure"
        ctx.audit.record("audit.verified", actor=actor(), outcome=outcome)
    finally:
        ctx.close()
    if not result.ok:
        typer.echo(f"audit: BROKEN: {result.problem}")
        raise typer.Exit(1)
    typer.echo(
        f"audit: OK: {result.entries} entries on {len(result.nodes)} node(s), {result.checkpoints} signed "
        f"checkpoint(s), last {result.last_checkpoint or 'never'}"
    )


@audit_app.command("tail")
def audit_tail(root: Path = ROOT, lines: int = typer.Option(20, "-n", help="How many entries.")) -> None:
    """Print the newest entries: who, what, which record ids, outcome (details stay sealed)."""
    from sqlalchemy import select

    from engine.store.tables import AuditRow

    ctx = context(root)
    try:
        table = AuditRow.__table__
        with ctx.db.connect() as conn:
            rows = conn.execute(select(table).order_by(table.c.ts.desc(), table.c.seq.desc()).limit(lines)).all()
    finally:
        ctx.close()
    for r in reversed(rows):
        ids = ",".join(json.loads(r.record_ids)) or "-"
        typer.echo(
            f"{r.node}#{r.seq} {r.ts} {r.actor} {r.action} {r.outcome} records={ids}"
            f"{' purpose=' + r.purpose if r.purpose else ''}{' peer=' + r.peer if r.peer else ''}"
        )


def _utc_bound(value: str | None, option: str) -> str | None:
    """An ISO 8601 time (naive means UTC) in the engine's RFC 3339 UTC form, so it compares with ts as text."""
    from datetime import UTC, datetime

    from engine.core.clock import iso

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be an ISO 8601 date or time, got {value!r}")
    return iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


@audit_app.command("export")
def audit_export(
    root: Path = ROOT,
    fmt: str = typer.Option(
        "fhir", "--format", help="fhir (a Bundle of AuditEvents), fhir-ndjson (one per line) or atna (DICOM XML)."
    ),
    since: str | None = typer.Option(None, help="Only entries at or after this ISO time (UTC unless given)."),
    until: str | None = typer.Option(None, help="Only entries before this ISO time (UTC unless given)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here (mode 0600); default: standard output."),
) -> None:
    """Export the audit log as FHIR AuditEvents (IHE BALP) or DICOM ATNA messages; sealed details stay sealed.
    The export is itself audited."""
    import os

    from engine.audit.export import FORMATS, read_batches, write

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    start, end = _utc_bound(since, "--since"), _utc_bound(until, "--until")
    ctx = context(root)
    detail: dict[str, object] = {"format": fmt, "since": start, "until": end, "out": str(out) if out else "stdout"}
    try:
        try:
            if out is None:
                detail["entries"] = write(read_batches(ctx.db, start, end), fmt, sys.stdout)
            else:
                # 0600 like the key file: ids and blind indexes are not PHI, but the trail is still sensitive
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
                with open(fd, "w", encoding="utf-8") as stream:
                    detail["entries"] = write(read_batches(ctx.db, start, end), fmt, stream)
        except Exception as exc:
            detail["error"] = type(exc).__name__
            ctx.audit.record("audit.exported", actor=actor(), outcome="failure", detail=detail)
            if isinstance(exc, OSError):
                fail(f"{out}: {exc.strerror}")
            raise
        ctx.audit.record("audit.exported", actor=actor(), detail=detail)
    finally:
        ctx.close()
    if out is not None:
        typer.echo(f"audit: exported {detail['entries']} entries to {out}", err=True)


# -- messages ----------------------------------------------------------------------------------


@messages_app.command("list")
def messages_list(
    root: Path = ROOT,
    channel: str | None = typer.Option(None, help="Only this channel."),
    status: str | None = typer.Option(None, help="Only this status (received, queued, sent, error, dead, ...)."),
    accession: str | None = typer.Option(None, help="Find by accession number (matched by blind index)."),
    mrn: str | None = typer.Option(None, help="Find by patient identifier (matched by blind index)."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
) -> None:
    """List messages: id, channel, kind, status, size, per-destination states. Never content."""
    ctx = context(root)
    try:
        index = None
        if accession or mrn:
            kind, value = ("accession", accession) if accession else ("mrn", mrn)
            index = (kind, ctx.index(kind, value or ""))
            ctx.audit.record("message.searched", actor=actor(), indexes={kind: index[1]})
        found = ctx.messages.list(channel=channel, status=status, index=index, limit=limit)
    finally:
        ctx.close()
    for m in found:
        deliveries = " ".join(f"{d}={s}/{n}" for d, s, n in m.deliveries) or "-"
        typer.echo(f"{m.id} {m.received_at:%Y-%m-%dT%H:%M:%SZ} {m.channel} {m.kind} {m.status} {m.size}B {deliveries}")


@messages_app.command("show")
def messages_show(
    message_id: str,
    root: Path = ROOT,
    decrypt: bool = typer.Option(False, "--decrypt", help="Print the decrypted content (audited)."),
    part: str = typer.Option("raw", help="Which part: raw, transformed, sent:<dest>, response:<dest>."),
    reason: str = typer.Option("operations", help="Purpose of use, recorded in the audit entry."),
) -> None:
    """Show a message's metadata; with --decrypt also its content, recording the access in the audit log."""
    ctx = context(root)
    try:
        view = ctx.messages.get(message_id)
        if view is None:
            fail(f"no message {message_id}")
        typer.echo(
            f"id: {view.id}\nchannel: {view.channel}\ndirection: {view.direction}\nkind: {view.kind}\n"
            f"status: {view.status}\nreceived: {view.received_at.isoformat()}\nupdated: {view.updated_at.isoformat()}\n"
            f"size: {view.size}\nconfig: {view.config_hash}\nparts: {', '.join(view.parts)}"
        )
        for destination, state, attempts in view.deliveries:
            typer.echo(f"delivery {destination}: {state} after {attempts} attempt(s)")
        if view.error:
            typer.echo(f"error: {view.error}")
        if decrypt:
            content = guard(lambda: ctx.messages.read(message_id, part))
            ctx.audit.record(
                "message.viewed", actor=actor(), purpose=reason, record_ids=[message_id], detail={"part": part}
            )
            typer.echo(f"--- {part} (decrypted; access recorded) ---")
            typer.echo(content.decode("utf-8", errors="replace").replace("\r", "\n"))
    finally:
        ctx.close()


@messages_app.command("reprocess")
def messages_reprocess(
    message_ids: list[str] = typer.Argument(None, help="Message ids; or select with --channel/--status."),
    root: Path = ROOT,
    channel: str | None = typer.Option(None, help="Select this channel's messages."),
    status: str | None = typer.Option(None, help="Select messages in this state (e.g. dead, error)."),
    limit: int = typer.Option(100, help="At most this many selected messages."),
) -> None:
    """Run stored messages through their channel again, as new messages linked to the originals (audited)."""
    from engine.runtime.reprocess import reprocess

    if not message_ids and not (channel or status):
        fail("name message ids, or select with --channel and/or --status")
    ctx = context(root)
    try:
        ids = list(message_ids or []) or [m.id for m in ctx.messages.list(channel=channel, status=status, limit=limit)]
        results = guard(lambda: asyncio.run(reprocess(ctx, ids, actor())))
    finally:
        ctx.close()
    for r in results:
        typer.echo(f"{r.original} -> {r.new or '-'} {r.status}")
    if any(r.new is None or r.status == "unavailable" for r in results):
        raise typer.Exit(1)


@studies_app.command("list")
def studies_list(
    root: Path = ROOT,
    state: str | None = typer.Option(None, help="Only this state (receiving, waiting, ready, held, ...)."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
) -> None:
    """List studies: id, channel, state, instance count, times and running timers. Never PHI."""
    from engine.correlation.repo import Repo
    from engine.correlation.view import study_line

    ctx = context(root)
    try:
        found = Repo(ctx.db).studies(state=state, limit=limit)
    finally:
        ctx.close()
    for study in found:
        typer.echo(study_line(study))


@studies_app.command("show")
def studies_show(
    study_id: str,
    root: Path = ROOT,
    phi: bool = typer.Option(False, "--phi", help="Show patient and study identifiers unmasked (audited)."),
    reason: str = typer.Option("operations", help="Purpose of use, recorded in the audit entry."),
) -> None:
    """A study's state, counts, timers and matched orders; identifiers masked unless --phi."""
    from engine.correlation.repo import Repo
    from engine.correlation.view import describe

    ctx = context(root)
    try:
        repo = Repo(ctx.db)
        study = repo.study_by_id(study_id)
        if study is None:
            fail(f"no study {study_id}")
        lines = guard(lambda: describe(repo, ctx.messages, study, phi=phi))
        if phi:
            ctx.audit.record("study.viewed", actor=actor(), purpose=reason, record_ids=[study_id])
    finally:
        ctx.close()
    for line in lines:
        typer.echo(line)


from engine.cli import compliance as _compliance  # noqa: E402,F401
from engine.cli import inference as _inference  # noqa: E402,F401 - registers models, jobs, deid
from engine.cli import users as _users  # noqa: E402,F401
