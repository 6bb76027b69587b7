"""Tariff hours: one grammar, read alike by the CSV import and the overcharging rule."""

from __future__ import annotations

import pytest

from core.tariff import ALL_DAY, format_hours, normalise_hours, parse_hours


@pytest.mark.parametrize(("spec", "hours"), [
    ("8-11;18-21", {8, 9, 10, 18, 19, 20}),
    ("22-6", {22, 23, 0, 1, 2, 3, 4, 5}),
    ("0-24", set(range(24))),
    ("23-24", {23}),
    ("7", {7}),
    (" 8-9 ; 13 ", {8, 13}),
    ("8-12;10-14", set(range(8, 14))),
    (None, set(range(24))),
    ("", set(range(24))),
    (float("nan"), set(range(24))),
])
def test_parse_hours(spec, hours):
    assert parse_hours(spec) == hours


@pytest.mark.parametrize("spec", ["8-8", "25", "24", "24-3", "8-25", "8-11,18-21", "８-11",
                                  "8-1_1", "8-", "-3", "8-11;", "8--11", "1.5"])
def test_parse_hours_refuses(spec):
    with pytest.raises(ValueError):
        parse_hours(spec)


def test_normalise_and_format():
    assert normalise_hours(" 22-6 ; 12 ") == "22-6;12"
    assert format_hours({8, 9, 10, 18}) == "8-11;18-19"
    assert format_hours(ALL_DAY) == "0-24"
    assert format_hours(()) == ""
