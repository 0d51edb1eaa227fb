"""Find, read and check a project's files: `lint()` reports, `load_project()` returns typed config.

Both run the same checks so that a project that lints clean is exactly one that loads. Nothing
here starts a component or opens a socket: components are only looked up and their Config
models validated.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ValidationError

from engine.config.lint import (
    Listener,
    check_channel_names,
    check_component,
    check_ports,
    check_tables,
    listener_of,
    validate,
)
from engine.config.schema import ChannelConfig, ComponentRef, DestinationRef, EngineConfig, MappingFile
from engine.config.secrets import Resolved, resolve_secrets
from engine.config.yamlpos import Diagnostic, PathT, YamlDoc, parse_yaml
from engine.core import registry
from engine.core.errors import ConfigError

Role = Literal["engine", "channel", "mapping"]
ENGINE_FILE = "config/engine.yaml"


class ConfigInvalid(ConfigError):
    """The project has diagnostics; str() is one `path:line:col: message` per line."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class LoadedDestination(NamedTuple):
    name: str
    kind: str
    config: BaseModel


@dataclass(frozen=True)
class LoadedChannel:
    path: str  # relative to the project root
    config: ChannelConfig
    source_kind: str
    source: BaseModel
    filter_kind: str | None
    filter: BaseModel | None
    destinations: list[LoadedDestination]
    mapping: MappingFile | None


@dataclass(frozen=True)
class Project:
    root: Path
    engine: EngineConfig
    channels: list[LoadedChannel]
    mappings: dict[str, MappingFile]  # relative path -> mapping
    files: dict[str, str]  # relative path -> raw text as on disk (secrets unresolved)
    hash: str  # sha256 over sorted (relative path, raw bytes): changes iff a loaded file changes


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


@dataclass
class _EngineFile:
    display: str
    doc: YamlDoc
    config: EngineConfig | None
    explicit_listeners: bool


@dataclass
class _Session:
    """State of one check run: every file read, every diagnostic, every validated model."""

    root: Path
    env: Mapping[str, str]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    raw: dict[str, bytes] = field(default_factory=dict)
    engine: _EngineFile | None = None
    channels: list[tuple[str, ChannelConfig, YamlDoc, LoadedChannel | None]] = field(default_factory=list)
    mappings: dict[str, MappingFile] = field(default_factory=dict)
    mapping_refs: list[tuple[str, str, tuple[int, int], str]] = field(default_factory=list)

    def display(self, path: Path) -> str:
        for base in (self.root, _abs(Path.cwd())):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
        return path.as_posix()

    def report(self, display: str, pos: tuple[int, int], message: str) -> None:
        self.diagnostics.append(Diagnostic(display, pos[0], pos[1], message))

    def read(self, path: Path) -> tuple[str, YamlDoc | None]:
        display = self.display(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.report(display, (1, 1), f"cannot read file ({exc.strerror or type(exc).__name__})")
            return display, None
        self.raw[display] = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.report(display, (1, 1), "file is not valid UTF-8")
            return display, None
        doc, diags = parse_yaml(text, display)
        self.diagnostics += diags
        return display, doc

    def check(self, path: Path, role: Role) -> None:
        display, doc = self.read(path)
        if doc is None:
            return
        if role == "mapping":  # mapping files hold no secrets: nothing to resolve
            self.check_mapping(display, doc)
            return
        resolved = resolve_secrets(doc, display, self.env)
        self.diagnostics += resolved.diagnostics
        if role == "engine":
            self.check_engine(display, doc, resolved)
        else:
            self.check_channel(display, doc, resolved)

    def check_engine(self, display: str, doc: YamlDoc, resolved: Resolved) -> None:
        data = {} if resolved.data is None else resolved.data  # an empty engine.yaml means all defaults
        engine, diags = validate(EngineConfig, data, doc, display, (), resolved)
        self.diagnostics += diags
        explicit = isinstance(data, dict) and "listeners" in data
        self.engine = _EngineFile(display, doc, engine, explicit)
        first: dict[str, str] = {}
        for i, listener in enumerate(engine.listeners if engine and explicit else []):
            pos = doc.value_pos(("listeners", i, "name"))
            if listener.name in first:
                msg = f"duplicate listener name '{listener.name}' (first defined at {first[listener.name]})"
                self.report(display, pos, msg)
            first.setdefault(listener.name, f"{display}:{pos[0]}:{pos[1]}")

    def check_mapping(self, display: str, doc: YamlDoc) -> None:
        mapping, diags = validate(MappingFile, doc.data, doc, display)
        self.diagnostics += diags
        if mapping is not None:
            self.diagnostics += check_tables(mapping, doc, display)
            self.mappings[display] = mapping

    def check_channel(self, display: str, doc: YamlDoc, resolved: Resolved) -> None:
        config, diags = validate(ChannelConfig, resolved.data, doc, display, (), resolved)
        self.diagnostics += diags
        results = {}
        for role, ref, prefix in _component_refs(config, resolved.data):
            result, diags = check_component(role, ref, doc, display, prefix, resolved)
            self.diagnostics += diags
            results[prefix] = result
        if config is None:
            return
        if config.mapping is not None:
            shown = str(doc.get(("mapping",)))  # raw text, never a resolved secret
            self.mapping_refs.append((display, config.mapping, doc.value_pos(("mapping",)), shown))
        loaded = None
        if all(results.values()):
            source = results[("source",)]
            filt = results.get(("filter",))
            dests = [results[("destinations", i)] for i in range(len(config.destinations))]
            loaded = LoadedChannel(
                path=display,
                config=config,
                source_kind=source.kind,
                source=source.config,
                filter_kind=filt.kind if filt else None,
                filter=filt.config if filt else None,
                destinations=[
                    LoadedDestination(r.name, d.kind, d.config) for r, d in zip(config.destinations, dests, strict=True)
                ],
                mapping=None,
            )
        self.channels.append((display, config, doc, loaded))

    def check_mapping_refs(self, load: bool) -> None:
        for display, ref, pos, shown in self.mapping_refs:
            target = _abs(self.root / ref)
            if not target.is_file():
                self.report(display, pos, f"mapping file '{shown}' not found")
            elif load and self.display(target) not in self.raw:
                self.check(target, "mapping")

    def engine_listeners(self, project_mode: bool) -> list[Listener]:
        eng = self.engine
        if eng is not None and eng.config is not None and eng.explicit_listeners:
            out = []
            for i, listener in enumerate(eng.config.listeners):
                line, col = eng.doc.value_pos(("listeners", i, "port"))
                out.append(
                    Listener(listener.host, listener.port, f"{eng.display}:{line}:{col}", eng.display, line, col)
                )
            return out
        if (eng is not None and eng.config is not None) or (eng is None and project_mode):
            where = eng.display if eng else ENGINE_FILE
            return [
                Listener(lst.host, lst.port, f"{where} (default listener '{lst.name}')", where, 1, 1)
                for lst in EngineConfig().listeners
            ]
        return []

    def finish(self, project_mode: bool) -> list[Diagnostic]:
        self.check_mapping_refs(load=project_mode)
        channels = sorted(self.channels, key=lambda c: c[0])
        self.diagnostics += check_channel_names([(config, doc, display) for display, config, doc, _ in channels])
        listeners = self.engine_listeners(project_mode)
        for display, config, doc, loaded in channels:
            # Disabled channels do not bind: an old and a new channel may share a port during a cut-over.
            if loaded is not None and config.enabled and _listens(loaded.source_kind):
                found = listener_of(loaded.source, doc, display, ("source",))
                listeners += [found] if found else []
        self.diagnostics += check_ports(listeners)
        return sorted(set(self.diagnostics))


def _component_refs(config: ChannelConfig | None, data: Any) -> list[tuple[registry.Kind, Any, PathT]]:
    """The channel's component references. When the channel as a whole is invalid, each part that
    is itself well-formed is still returned, so one typo does not hide the component's errors."""
    if config is not None:
        refs: list[tuple[registry.Kind, Any, PathT]] = [("source", config.source, ("source",))]
        if config.filter is not None:
            refs.append(("stage", config.filter, ("filter",)))
        refs += [("destination", ref, ("destinations", i)) for i, ref in enumerate(config.destinations)]
        return refs
    if not isinstance(data, dict):
        return []
    parts: list[tuple[registry.Kind, Any, PathT, type[BaseModel]]] = [
        ("source", data.get("source"), ("source",), ComponentRef),
        ("stage", data.get("filter"), ("filter",), ComponentRef),
    ]
    if isinstance(data.get("destinations"), list):
        parts += [("destination", d, ("destinations", i), DestinationRef) for i, d in enumerate(data["destinations"])]
    refs = []
    for role, part, prefix, model in parts:
        try:
            refs.append((role, model.model_validate(part), prefix))
        except ValidationError:
            continue  # already reported by the channel's own validation
    return refs


def _listens(source_kind: str) -> bool:
    # A source that connects out but has a `port` (polling a peer) sets `listens = False`.
    component = registry.get("source", source_kind)
    return component is not None and getattr(component.cls, "listens", True) is not False


# --- finding files ---------------------------------------------------------------------------


def _yaml_files(folder: Path) -> list[Path]:
    # Hidden folders (.venv, .git) and `*_test.yaml` channel test specs are not configuration.
    return sorted(
        p
        for p in folder.rglob("*.yaml")
        if p.is_file()
        and not p.name.endswith("_test.yaml")
        and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])
    )


def classify(path: Path, root: Path) -> Role:
    """engine.yaml or under config/ -> engine; under mappings/ or top-level `fields:` -> mapping."""
    parents = (path.relative_to(root) if path.is_relative_to(root) else path).parts[:-1]
    if path.name == "engine.yaml" or "config" in parents:
        return "engine"
    if "mappings" in parents:
        return "mapping"
    try:
        head = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "channel"
    return "mapping" if any(line.startswith("fields:") for line in head.splitlines()) else "channel"


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    out: dict[Path, None] = {}
    for given in paths:
        path = _abs(given)
        for found in _yaml_files(path) if path.is_dir() else [path]:
            out[found] = None
    return list(out)


def _run_project(session: _Session) -> None:
    root = session.root
    engine_path = root / ENGINE_FILE
    if engine_path.is_file():
        session.check(engine_path, "engine")
    engine = session.engine.config if session.engine and session.engine.config else EngineConfig()
    channel_files: dict[Path, None] = {}
    for pattern in engine.channels:
        for found in sorted(root.glob(pattern)):
            if found.is_file():
                channel_files[_abs(found)] = None
    mappings_dir = root / engine.mappings
    mapping_files = _yaml_files(mappings_dir) if mappings_dir.is_dir() else []
    for path in mapping_files:
        session.check(path, "mapping")
    for path in channel_files:
        if path not in mapping_files and path != _abs(engine_path):
            session.check(path, "channel")


# --- public API ------------------------------------------------------------------------------


def lint(
    paths: Sequence[str | Path] = (), root: Path | None = None, env: Mapping[str, str] | None = None
) -> list[Diagnostic]:
    """Check files (or folders of *.yaml) without starting anything; no paths = the project at
    `root` (default: cwd). Diagnostics come sorted by path, line and column."""
    session = _Session(_abs(root or Path.cwd()), os.environ if env is None else env)
    if paths:
        for path in _expand(paths):
            if not path.is_file():
                session.report(session.display(path), (1, 1), "file not found")
                continue
            session.check(path, classify(path, session.root))
    else:
        _run_project(session)
    return session.finish(project_mode=not paths)


def config_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over (relative path, content) pairs in path order, length-prefixed so no two
    different file sets can produce the same byte stream."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode("utf-8"), files[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def load_project(root: Path, env: Mapping[str, str] | None = None) -> Project:
    """Load and validate the whole project; raises ConfigInvalid (a ConfigError) listing every
    diagnostic when anything is wrong."""
    session = _Session(_abs(root), os.environ if env is None else env)
    _run_project(session)
    diagnostics = session.finish(project_mode=True)
    if diagnostics:
        raise ConfigInvalid(diagnostics)
    engine = session.engine.config if session.engine and session.engine.config else EngineConfig()
    channels = []
    for _display, config, _doc, loaded in sorted(session.channels, key=lambda c: c[0]):
        assert loaded is not None  # no diagnostics means every channel validated
        mapping = session.mappings[session.display(_abs(root / config.mapping))] if config.mapping else None
        channels.append(replace(loaded, mapping=mapping))
    return Project(
        root=session.root,
        engine=engine,
        channels=channels,
        mappings=dict(sorted(session.mappings.items())),
        files={name: data.decode("utf-8") for name, data in sorted(session.raw.items())},
        hash=config_hash(session.raw),
    )
