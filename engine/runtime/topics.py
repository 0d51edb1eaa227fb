"""Internal topics: `order.accepted`, `study.stable`, ... Channels publish records to them with a
`topic` destination and receive them with a `topic` source; built-in stages subscribe the same way.

A publish hands the record to every subscriber's ingest, which stores it durably in the subscribing
channel before the publishing delivery counts as sent: nothing is lost between channels.
"""

from __future__ import annotations

import fnmatch
import json

from pydantic import BaseModel, ConfigDict, Field

from engine.core.component import ComponentContext, Delivered, Inbound, Outbound, Outcome, Sink
from engine.core.errors import PermanentError, RetryableError
from engine.core.registry import register

TOPIC = r"^[a-z0-9][a-z0-9_.*-]*$"


class TopicBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Sink]] = []

    def subscribe(self, pattern: str, sink: Sink) -> None:
        self._subscribers.append((pattern, sink))

    def unsubscribe(self, sink: Sink) -> None:
        self._subscribers = [(p, s) for p, s in self._subscribers if s is not sink]

    def subscribers(self, topic: str) -> list[Sink]:
        return [sink for pattern, sink in self._subscribers if fnmatch.fnmatchcase(topic, pattern)]

    async def publish(self, topic: str, inbound: Inbound) -> list[Outcome]:
        return [await sink(inbound) for sink in self.subscribers(topic)]


class TopicSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(pattern=TOPIC, description="Topic to receive, e.g. order.accepted; `*` matches any part.")


@register("source", "topic")
class TopicSource:
    Config = TopicSourceConfig

    def __init__(self, config: TopicSourceConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self._sink: Sink | None = None

    async def start(self, sink: Sink) -> list[str]:
        if self.ctx.topics is None:
            raise RuntimeError("topic source needs the engine's topics")
        self._sink = sink
        self.ctx.topics.subscribe(self.config.topic, sink)
        return [f"topic {self.config.topic}"]

    async def stop(self) -> None:
        if self._sink is not None and isinstance(self.ctx.topics, TopicBus):
            self.ctx.topics.unsubscribe(self._sink)


class TopicDestinationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str | None = Field(
        None, pattern=TOPIC, description="Topic to publish to; default: each record's own topic from the mapping."
    )


@register("destination", "topic")
class TopicDestination:
    """Publishes each record of a message (one JSON object per line) to its topic."""

    Config = TopicDestinationConfig

    def __init__(self, config: TopicDestinationConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx

    async def send(self, message: Outbound) -> Delivered:
        if self.ctx.topics is None:
            raise PermanentError("topic destination needs the engine's topics")
        published = 0
        for n, line in enumerate(message.body.splitlines()):
            if not line.strip():
                continue
            record = json.loads(line)
            topic = self.config.topic or record.get("topic")
            if not topic:
                raise PermanentError(f"record of message {message.message_id} has no topic")
            inbound = Inbound(
                raw=line, kind="record", peer=f"channel:{self.ctx.channel}", decoded=record, type=record.get("type"),
                dedup=f"{message.message_id}#{n}",  # a retried publish is recognised by subscribers
            )  # fmt: skip
            for outcome in await self.ctx.topics.publish(topic, inbound):
                if outcome.status == "unavailable":
                    raise RetryableError(f"a subscriber of {topic} could not store the record")
            published += 1
        return Delivered(detail=f"{published} record(s) published")

    async def close(self) -> None:
        return None
