import pytest

from core.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("250ms", 0.25), ("7d", 604800), ("1h30m", 5400),
    ("1d 2h", 93600), ("2m30s", 150), ("12", 12), (45, 45), (1.5, 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-5s", "30m1h", "1h1h", "5 minutes", "1h30", True, -1])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes():
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1GB") == 10**9
    assert parse_size(512) == 512
    with pytest.raises(ValueError):
        parse_size("12 parsecs")
