"""Turn a channel's mapping file into the Transform its pipeline calls for each message."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from engine.config import LoadedChannel, Project
from engine.runtime.channel import Transform


def build_transform(loaded: LoadedChannel, project: Project) -> tuple[Transform | None, tuple[str, ...]]:
    """(transform or None, message types the channel accepts)."""
    accept = tuple(getattr(loaded.source, "accept_types", None) or ())
    if loaded.config.mapping is None:
        return None, accept
    raise NotImplementedError("mapping integration pending")  # replaced when engine.mapping lands
    _ = ZoneInfo
