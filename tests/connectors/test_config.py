"""connectors/config.py: the collector's sections, as the shell picks them out of ``Settings``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from connectors.config import CollectorConfig
from core.settings import load_settings
from sitetwin.wiring import collector_config


def test_the_shell_hands_the_collector_its_sections_and_resolved_paths(tmp_path):
    settings = load_settings(None, services={"state_dir": str(tmp_path / "state")},
                             mqtt={"client_id": "c7", "qos": 0}, collector={"batch_size": 17},
                             influxdb={"database": "d7"}, spool={"fsync": False},
                             dead_letter={"max_payload_bytes": "4KiB"})
    config = collector_config(settings)
    assert (config.mqtt.client_id, config.mqtt.qos) == ("c7", 0)
    assert config.collector.batch_size == 17
    assert config.influxdb.database == "d7"
    assert config.spool.fsync is False
    assert config.dead_letter.max_payload_bytes == 4096
    assert config.spool_path == tmp_path / "state" / "spool"
    assert config.dead_letter_path == tmp_path / "state" / "rejected.sqlite"


def test_explicit_spool_and_dead_letter_places_win_over_the_state_dir(tmp_path):
    settings = load_settings(None, services={"state_dir": str(tmp_path / "state")},
                             spool={"path": str(tmp_path / "sp")},
                             dead_letter={"path": str(tmp_path / "dl.sqlite")})
    config = collector_config(settings)
    assert (config.spool_path, config.dead_letter_path) == (tmp_path / "sp", tmp_path / "dl.sqlite")


def test_the_config_is_frozen_and_holds_only_what_a_collector_reads():
    config = collector_config(load_settings(None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mqtt = config.mqtt  # type: ignore[misc]
    assert {f.name for f in dataclasses.fields(CollectorConfig)} == {
        "mqtt", "collector", "influxdb", "spool", "dead_letter", "spool_path", "dead_letter_path"}
    assert isinstance(config.spool_path, Path)
