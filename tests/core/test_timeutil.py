from datetime import UTC, datetime

import pytest

from core.timeutil import format_local, local_month, parse_instant


def test_a_date_is_local_midnight():
    assert parse_instant("2026-10-01", "Asia/Shanghai") == datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert parse_instant("2026-10-01", "UTC") == datetime(2026, 10, 1, tzinfo=UTC)


def test_a_naive_time_is_local_and_an_offset_keeps_its_instant():
    assert parse_instant("2026-10-01T08:00", "Asia/Shanghai") == datetime(2026, 10, 1, 0, tzinfo=UTC)
    assert parse_instant("2026-10-01T08:00Z", "Asia/Shanghai") == datetime(2026, 10, 1, 8, tzinfo=UTC)
    assert parse_instant("2026-10-01T08:00+02:00") == datetime(2026, 10, 1, 6, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "2026-13-01", "０２６-10-01", "2026-1-1", "0001-01-01",
                                  "2026-10-01T25:00", "yesterday", "2026_10_01"])
def test_bad_instants_are_refused(text):
    with pytest.raises(ValueError):
        parse_instant(text)


def test_local_month_bounds():
    start, end = local_month("2026-10", "Asia/Shanghai")
    assert start == datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert end == datetime(2026, 10, 31, 16, tzinfo=UTC)
    assert local_month("2026-12", "UTC")[1] == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        local_month("2026-13")


def test_format_local_names_the_offset():
    t = datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert format_local(t, "Asia/Shanghai") == "2026-10-01 00:00 +08:00"
    assert format_local(t, "America/New_York", seconds=True) == "2026-09-30 12:00:00 -04:00"


def test_utc_timestamp_takes_naive_as_utc_and_converts_aware():
    import pandas as pd

    from core.timeutil import utc_timestamp

    assert utc_timestamp(datetime(2026, 10, 1, 8)) == pd.Timestamp("2026-10-01T08:00Z")
    shanghai = utc_timestamp(pd.Timestamp("2026-10-01T08:00+08:00"))
    assert shanghai == pd.Timestamp("2026-10-01T00:00Z") and str(shanghai.tz) == "UTC"
    assert str(utc_timestamp("2026-10-01").tz) == "UTC"
