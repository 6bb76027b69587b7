"""What the built dashboards show that comes from configuration: zone, map tiles, thresholds.

The lines and colours drawn on the time series are the rule engine's own
thresholds (``[rules.<name>]`` through ``rules.registry.thresholds_for``), read
when the dashboards are built: a panel that turns red at -95 dBm while the
rule flags at -105 dBm tells two different stories.  ``Display()`` holds the
defaults (the rules' defaults), so the committed ``dashboards/built/`` matches
the sample configuration.

Definitions name a setting with ``Setting("soc_critical_pct")`` wherever a
number from the configuration goes; ``resolve`` puts the value in when a
dashboard is rendered.  So a dashboard stays a constant that reads like the
JSON it makes, and one definition serves every configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from core.settings import GrafanaSettings, RulesSettings
from rules.registry import get_rule, thresholds_for

__all__ = ["Display", "Setting", "resolve"]


def _default(rule: str, key: str) -> float:
    return float(getattr(get_rule(rule).configure(None), key))


@dataclass(frozen=True)
class Display:
    """Configuration the dashboards are rendered with (defaults = the sample configuration)."""

    # Grafana's dashboard "timezone": "browser", "utc" or an IANA name.
    timezone: str = "browser"
    map_tiles: str = ""
    map_attribution: str = ""
    interference_warning_dbm: float = _default("interference", "warning_dbm")
    interference_critical_dbm: float = _default("interference", "critical_dbm")
    soc_critical_pct: float = _default("mains_failure", "soc_critical_pct")
    offline_after_s: float = _default("site_offline", "offline_after")
    offline_critical_s: float = _default("site_offline", "critical_after")
    reservation_critical_over: float = _default("reservations", "critical_over")
    alert_interval_s: float = 60.0
    alert_for_s: float = 300.0

    @property
    def basemap(self) -> dict[str, Any]:
        """The geomap base layer: Grafana's default, or the configured XYZ tile server."""
        if not self.map_tiles:
            return {"type": "default", "name": "Basemap", "config": {}}
        return {"type": "xyz", "name": "Basemap",
                "config": {"url": self.map_tiles, "attribution": self.map_attribution}}

    @classmethod
    def from_settings(cls, *, grafana: GrafanaSettings, rules: RulesSettings, zone: str) -> Display:
        """The display of the ``[grafana]`` and ``[rules]`` sections and the ``[time] zone``
        (what ``timezone = "time"`` means); a bad rule threshold raises the rules' ThresholdError."""
        g = grafana

        def t(rule: str, key: str) -> float:
            return float(getattr(thresholds_for(rules, get_rule(rule)), key))

        return cls(
            timezone=zone if g.timezone == "time" else g.timezone,
            map_tiles=g.map_tiles,
            map_attribution=g.map_attribution,
            interference_warning_dbm=t("interference", "warning_dbm"),
            interference_critical_dbm=t("interference", "critical_dbm"),
            soc_critical_pct=t("mains_failure", "soc_critical_pct"),
            offline_after_s=t("site_offline", "offline_after"),
            offline_critical_s=t("site_offline", "critical_after"),
            reservation_critical_over=t("reservations", "critical_over"),
            alert_interval_s=g.alert_interval,
            alert_for_s=g.alert_for,
        )


@dataclass(frozen=True)
class Setting:
    """A placeholder in a definition for the ``Display`` attribute ``name``."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in {f.name for f in fields(Display)} | {"basemap"}:
            raise ValueError(f"no display setting {self.name!r}")


def resolve(value: Any, display: Display) -> Any:
    """``value`` (dicts and lists inside) with every ``Setting`` replaced by its value."""
    if isinstance(value, Setting):
        return getattr(display, value.name)
    if isinstance(value, dict):
        return {k: resolve(v, display) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(v, display) for v in value]
    return value
