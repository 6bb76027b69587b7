"""What one collector is configured with: the sections it reads and the places on disk.

A collector reads five sections - ``[mqtt]`` (its broker, subscription and session),
``[collector]`` (batching, writers, watchdog, adoption), ``[influxdb]``, ``[spool]``
and ``[dead_letter]`` - and two paths that ``core.settings.Settings`` derives from
``[services] state_dir`` (``spool_path``, ``dead_letter_path``).  The shell picks them
out (``sitetwin.wiring.collector_config``); the collector never sees the whole
configuration (issue 12).

Why one bundle rather than seven keyword arguments: a collector builds a second
collector with the same configuration to adopt a dead peer (``Collector.adopt``),
and seven arguments handed on in two places drift apart; the fields keep the names
they have on ``Settings``, so the collector reads ``settings.mqtt.keepalive`` as
before.  A plain frozen dataclass, not a pydantic model: its parts are sections
already validated when the configuration was loaded, and nothing here is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.settings import (
    CollectorSettings,
    DeadLetterSettings,
    InfluxSettings,
    MqttSettings,
    SpoolSettings,
)

__all__ = ["CollectorConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorConfig:
    """The sections a ``Collector`` reads, and where its spool and dead letters live."""

    mqtt: MqttSettings
    influxdb: InfluxSettings
    spool_path: Path  # the directory holding one spool directory per client id
    dead_letter_path: Path  # the dead-letter SQLite file
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    dead_letter: DeadLetterSettings = field(default_factory=DeadLetterSettings)
