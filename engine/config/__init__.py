"""Configuration: YAML loaded with positions, pydantic schemas, secrets and lint.

`lint()` reports `path:line:col: message` diagnostics without starting anything;
`load_project()` returns the validated project or raises ConfigInvalid (a ConfigError).
"""

from engine.config.project import (
    ConfigInvalid,
    LoadedChannel,
    LoadedDestination,
    Project,
    classify,
    config_hash,
    lint,
    load_project,
)
from engine.config.schema import ChannelConfig, EngineConfig, FieldRule, MappingFile
from engine.config.secrets import references, resolve_secrets
from engine.config.yamlpos import Diagnostic, YamlDoc, parse_yaml

__all__ = [
    "ChannelConfig",
    "ConfigInvalid",
    "Diagnostic",
    "EngineConfig",
    "FieldRule",
    "LoadedChannel",
    "LoadedDestination",
    "MappingFile",
    "Project",
    "YamlDoc",
    "classify",
    "config_hash",
    "lint",
    "load_project",
    "parse_yaml",
    "references",
    "resolve_secrets",
]
