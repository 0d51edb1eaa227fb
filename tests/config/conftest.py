"""Throwaway components (prefixed test-) and a helper that writes a project into tmp_path."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.core.registry import register


class ListenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(ge=1, le=65535, description="Port to bind.")


class PollConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="Peer to poll.")
    port: int = Field(description="Peer port.")


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="Peer address.")
    port: int = Field(ge=1, le=65535, description="Peer port.")
    token: str | None = Field(None, description="Credential.")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 20:
            raise ValueError(f"token {value} is too short")  # deliberately quotes its input
        return value


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expression: str = Field(description="What to keep.")


@register("source", "test-listen")
class TestListen:
    Config = ListenConfig


@register("source", "test-poll")
class TestPoll:
    Config = PollConfig
    listens = False


@register("destination", "test-sink")
class TestSink:
    Config = SinkConfig


@register("stage", "test-filter")
class TestFilter:
    Config = FilterConfig


Write = Callable[[str, str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """write("channels/a.yaml", text) -> path; text is dedented so tests can indent it."""

    def _write(rel: str, text: str) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write
