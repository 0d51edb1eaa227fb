"""Fixtures of the FHIR tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fhir.site import Site, serve_site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve_site(tmp_path)
