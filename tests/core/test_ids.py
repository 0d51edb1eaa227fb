import uuid

from engine.core.ids import new_id


def test_uuid7_ids_sort_in_creation_order_even_within_a_millisecond() -> None:
    ids = [new_id() for _ in range(10_000)]  # many share a millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and len(ids[0]) == 36
