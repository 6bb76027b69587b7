"""Window data asked concurrently: answers in order, two in flight at once, one request for a
statement asked twice at the same time, failures not remembered, and one at a time when set."""

from __future__ import annotations

import threading
import time

import pytest

from connectors.errors import QueryError
from rules.data import WindowData
from rules.errors import RuleDataError


def _result(q: str) -> dict:
    return {"series": [{"name": "m", "columns": ["time", "q"], "values": [[0, q]]}]}


class FakeReader:
    """Answers each statement with itself; records how many requests were in flight."""

    def __init__(self, delay: float = 0.05, fail: set[str] | None = None) -> None:
        self.delay = delay
        self.fail = set(fail or ())
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def raw(self, q: str) -> list[dict]:
        with self._lock:
            self.calls.append(q)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if q in self.fail:
                self.fail.discard(q)  # fails once
                raise QueryError(f"query failed: {q} timed out")
            return [_result(q)]
        finally:
            with self._lock:
                self.in_flight -= 1


def _values(frames) -> list[str]:
    return [f["q"].iloc[0] for f in frames]


def test_statements_come_back_in_order_with_two_in_flight():
    reader = FakeReader()
    data = WindowData(reader, concurrency=2)
    statements = [f"SELECT {i}" for i in range(6)]
    try:
        assert _values(data._frames(statements)) == statements
    finally:
        data.close()
    assert reader.max_in_flight == 2
    assert sorted(reader.calls) == sorted(statements)


def test_concurrency_one_asks_one_at_a_time():
    reader = FakeReader(delay=0.01)
    data = WindowData(reader, concurrency=1)
    statements = [f"SELECT {i}" for i in range(4)]
    assert _values(data._frames(statements)) == statements
    assert reader.max_in_flight == 1


def test_a_statement_in_flight_is_asked_once_by_two_threads():
    reader = FakeReader(delay=0.2)
    data = WindowData(reader, concurrency=2)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.extend(_values([data._frame("SELECT e", memo="run")])))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert got == ["SELECT e", "SELECT e"]
    assert reader.calls == ["SELECT e"]
    # Remembered for the run, forgotten by the next one.
    data._frame("SELECT e", memo="run")
    assert reader.calls == ["SELECT e"]
    data.new_run()
    data._frame("SELECT e", memo="run")
    assert reader.calls == ["SELECT e", "SELECT e"]


def test_a_failed_statement_is_not_remembered_and_the_others_still_answer():
    reader = FakeReader(fail={"SELECT bad"})
    data = WindowData(reader, concurrency=2)
    try:
        with pytest.raises(RuleDataError, match="SELECT bad timed out"):
            data._frames(["SELECT good", "SELECT bad"], memo=True)
        # The good answer was kept; the failed one is asked again and now answers.
        assert _values(data._frames(["SELECT good", "SELECT bad"], memo=True)) == ["SELECT good", "SELECT bad"]
    finally:
        data.close()
    assert reader.calls.count("SELECT good") == 1
    assert reader.calls.count("SELECT bad") == 2


def test_memo_per_statement():
    reader = FakeReader(delay=0.0)
    data = WindowData(reader, concurrency=2)
    try:
        data._frames(["SELECT a", "SELECT b"], memo=[True, False])
        data._frames(["SELECT a", "SELECT b"], memo=[True, False])
    finally:
        data.close()
    assert reader.calls.count("SELECT a") == 1
    assert reader.calls.count("SELECT b") == 2
