"""The console's live view and the labelled-data parser, with a controlled clock and plain text."""

from __future__ import annotations

import pytest

from routers.evaluation import OUT_OF_SCOPE
from routers.labelled_data import LabelledDataError, parse_labelled
from server.observability.activity import RecentActivity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_summary_covers_the_window_only() -> None:
    clock = Clock()
    activity = RecentActivity(clock=clock)
    activity.decided("sql", False)
    activity.served("chat.completions", "sql", 2.0)
    clock.now += 400  # the first two fall out of a 300 s window
    activity.decided("sql", False)
    activity.decided("base", True)
    activity.served("chat.completions", "sql", 1.0)
    activity.served("chat.completions", "sql", 3.0)
    summary = activity.summary(300)
    assert summary["decisions"] == 2 and summary["fallback_share"] == 0.5
    assert summary["experts"]["sql"] == {"requests": 2, "p50_ms": 2000.0, "decisions": 1}


def test_timeline_puts_each_decision_in_its_bucket() -> None:
    clock = Clock()
    activity = RecentActivity(clock=clock)
    for offset, expert in ((5, "sql"), (15, "math"), (16, "math"), (29, "base")):
        clock.now = 1000.0 + offset
        activity.decided(expert, expert == "base")
    clock.now = 1030.0
    buckets = activity.timeline(30, 10)
    assert [b["experts"] for b in buckets] == [{"sql": 1}, {"math": 2}, {"base": 1}]
    assert [b["fallback_share"] for b in buckets] == [0.0, 0.0, 1.0]


def test_bounded_memory() -> None:
    activity = RecentActivity(max_events=10)
    for _ in range(100):
        activity.decided("sql", False)
    assert activity.summary(60)["decisions"] == 10


def test_labelled_data_in_both_formats_and_clear_errors() -> None:
    jsonl = '{"text": "count rows", "label": "sql"}\n\n{"text": "hi there", "label": "generalist"}\n'
    assert parse_labelled(jsonl, is_csv=False) == [("count rows", "sql"), ("hi there", OUT_OF_SCOPE)]
    assert parse_labelled("text,label\ncount rows,sql\n", is_csv=True) == [("count rows", "sql")]
    with pytest.raises(LabelledDataError, match="line 2"):
        parse_labelled('{"text": "a", "label": "sql"}\nnot json', is_csv=False)
    with pytest.raises(LabelledDataError, match="row 2"):
        parse_labelled("text,label\n,sql\n", is_csv=True)
