"""Component registry: sources, destinations and stages, registered by kind and name.

Built-in components and third-party ones arrive the same way, through the entry point groups
`radbridge.connectors` and `radbridge.models` (see pyproject.toml), so there is one way to add one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

Kind = Literal["source", "destination", "stage"]
KINDS: tuple[Kind, ...] = ("source", "destination", "stage")
ENTRY_POINT_GROUPS = ("radbridge.connectors", "radbridge.models")

T = TypeVar("T", bound=type)
log = logging.getLogger("radbridge.registry")


@dataclass(frozen=True)
class Component:
    kind: Kind
    name: str
    cls: type
    config: type[BaseModel]


_components: dict[tuple[str, str], Component] = {}
_plugins_loaded = False


def register(kind: Kind, name: str) -> Callable[[T], T]:
    """Class decorator: `@register("destination", "fhir")` on a class with a pydantic `Config`."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}")

    def decorate(cls: T) -> T:
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise TypeError(f"{cls.__name__} needs a pydantic Config model to be registered")
        existing = _components.get((kind, name))
        if existing and existing.cls is not cls:
            raise ValueError(f"{kind} {name!r} is registered twice ({existing.cls.__module__}, {cls.__module__})")
        _components[(kind, name)] = Component(kind, name, cls, config)
        return cls

    return decorate


def load_plugins() -> None:
    """Import every module named in the entry point groups once, so their components register."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            try:
                ep.load()
            except ImportError as exc:  # a broken plugin must not take the engine or lint down
                log.error("component plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)


def get(kind: str, name: str) -> Component | None:
    load_plugins()
    return _components.get((kind, name))


def names(kind: str) -> list[str]:
    load_plugins()
    return sorted(n for (k, n) in _components if k == kind)


def build(kind: Kind, name: str, config: BaseModel, ctx: Any) -> Any:
    """Instantiate a registered component from an already validated config."""
    component = get(kind, name)
    if component is None:
        raise LookupError(f"no {kind} component named {name!r}")
    return component.cls(config, ctx)
