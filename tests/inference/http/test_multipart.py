"""The streamed multipart/related body: what a standard parser (the email package) reads back."""

from __future__ import annotations

from engine.inference.http.multipart import RelatedBody
from tests.inference.http.servers import parse_related


async def test_body_parses_back_to_the_instances_with_its_declared_length() -> None:
    instances = [b"\r\n--" + bytes(range(256)) * 4, b"", b"DICM\r\n\r\n" * 3]
    body = RelatedBody(instances)
    data = b"".join([chunk async for chunk in body.stream()])
    assert len(data) == body.length
    assert parse_related(body.content_type, data) == instances
    assert body.content_type == f'multipart/related; type="application/dicom"; boundary={body.boundary}'


async def test_streams_are_replayable_and_do_not_join_the_instances() -> None:
    big = bytes(1024 * 1024)
    body = RelatedBody([big, big])
    first = [chunk async for chunk in body.stream()]
    second = [chunk async for chunk in body.stream()]
    assert first == second
    assert first[1] is big  # the instance itself is yielded, not a copy
    assert max(len(c) for c in first) == len(big)


def test_boundary_never_occurs_in_an_instance(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import engine.inference.http.multipart as multipart

    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(multipart.secrets, "token_hex", lambda n: next(tokens))
    body = RelatedBody([b"xx radbridge-aaaa xx"])
    assert body.boundary == "radbridge-bbbb"
