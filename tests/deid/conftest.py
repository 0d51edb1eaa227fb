"""Helpers shared by the de-identification tests."""

from __future__ import annotations

from pydicom.dataset import Dataset

from engine.deid import DeidOutcome, DeidProfile, DicomDeidentifier
from tests.deid.data import KEY, PROJECT


def run(ds: Dataset, **options: object) -> DeidOutcome:
    """De-identify `ds` under the test key with a profile built from `options`."""
    profile = DeidProfile(project=PROJECT, **options)  # type: ignore[arg-type]
    return DicomDeidentifier(profile, KEY).apply(ds)


def action_of(outcome: DeidOutcome, name: str) -> str:
    found = [a for n, a in outcome.actions if n == name]
    assert len(found) == 1, (name, found)
    return found[0]
