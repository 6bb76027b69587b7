"""Time and count arguments: one parser, one-line errors, nothing reaches InfluxDB or pandas."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.errors import UserError
from core.settings import Settings
from sitetwin.arguments import cli_time
from sitetwin.cli import main


@pytest.mark.parametrize("argv", [
    ["rules", "run", "--until", ""],
    ["rules", "run", "--since", ""],
    ["rules", "run", "--since", "0001-01-01"],
    ["rules", "run", "--until", "yesterday"],
    ["sites", "show", "S1", "--at", "2026-02-30"],
])
def test_bad_times_are_one_line_user_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sitetwin: error: --")


@pytest.mark.parametrize("argv", [
    ["flags", "list", "--limit", "-1"],
    ["flags", "list", "--limit", "0"],
    ["rejected", "list", "--limit", "ten"],
])
def test_bad_counts_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_times_are_local_unless_they_say_otherwise():
    s = Settings(time={"zone": "Asia/Shanghai"})
    assert cli_time("2026-10-01", "--at", s) == datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert cli_time("2026-10-01T00:00:00Z", "--at", s) == datetime(2026, 10, 1, tzinfo=UTC)
    assert cli_time(None, "--at", s) is None
    with pytest.raises(UserError, match="empty"):
        cli_time(" ", "--at", s)
