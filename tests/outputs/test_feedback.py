"""The feedback repository on SQLite and PostgreSQL: one current verdict per (report, finding, user),
replaced in place, also when two engine nodes write at once; and the weekly monitoring figures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from engine.outputs.feedback import Feedback, ResultFacts, Week, iso_week, monitoring
from engine.runtime.context import Context


def give(ctx: Context, verdict: str, username: str = "radiologist", code: str = "1386000",
         at: datetime | None = None) -> None:  # fmt: skip
    row = Feedback.row("s1/ich-ct", "s1", "job-1", "ich-ct", "1.2.0", code, verdict, username, at or datetime.now(UTC))
    ctx.writer.write(Feedback(ctx.db).give(row))


def test_a_new_verdict_replaces_the_users_earlier_one(ctx: Context) -> None:
    give(ctx, "agree")
    give(ctx, "disagree")
    give(ctx, "agree", username="another")
    give(ctx, "not_applicable", code="263204007")
    found = {(f.username, f.code): f.verdict for f in Feedback(ctx.db).of_studies(["s1"])}
    assert found == {("radiologist", "1386000"): "disagree", ("another", "1386000"): "agree",
                     ("radiologist", "263204007"): "not_applicable"}  # fmt: skip
    assert [f.verdict for f in Feedback(ctx.db).of_studies(["s1"], "another")] == ["agree"]
    with pytest.raises(ValueError):
        give(ctx, "maybe")


def test_racing_verdicts_leave_one_row(ctx: Context) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: give(ctx, ("agree", "disagree")[i % 2]), range(32)))
    [row] = Feedback(ctx.db).of_studies(["s1"])
    assert row.verdict in ("agree", "disagree")


def test_weekly_figures_and_agreement(ctx: Context) -> None:
    now = datetime.now(UTC)
    give(ctx, "agree", at=now)
    give(ctx, "disagree", username="b", at=now)
    give(ctx, "agree", username="c", at=now)
    give(ctx, "agree", username="old", code="x", at=now - timedelta(days=7))
    figures = monitoring(ctx.db, ResultFacts(ctx.messages), now - timedelta(days=14))
    weeks = figures[("ich-ct", "1.2.0")]
    assert weeks[iso_week(now)].feedback == {"agree": 2, "disagree": 1, "not_applicable": 0}
    assert weeks[iso_week(now)].agreement == pytest.approx(2 / 3)
    assert weeks[iso_week(now - timedelta(days=7))].agreement == 1.0
    assert weeks[iso_week(now)].processed == 0 and weeks[iso_week(now)].positive_rate is None
    assert Week("empty").agreement is None
