"""The registered rules, in the order they run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.settings import RulesSettings
from rules.environment import BATTERY_LLVD_RISK, CABINET_OVERTEMP, DOOR_OPEN, TILT_EXCEEDED
from rules.errors import ThresholdError, UnknownRule
from rules.interference import INTERFERENCE
from rules.lifecycle import LIFECYCLE
from rules.operations import MAINS_FAILURE, SITE_OFFLINE
from rules.overcharging import OVERBILLING, OVERCHARGING
from rules.reservations import RESERVATIONS
from rules.rule import Rule, Thresholds

__all__ = ["RULES", "check_rule_tables", "get_rule", "thresholds_for"]

RULES: tuple[Rule, ...] = (
    # mains_failure before site_offline: an offline flag links to its site's mains-failure
    # flag as its probable cause, which then exists already in the same run.
    OVERCHARGING, OVERBILLING, INTERFERENCE, RESERVATIONS, LIFECYCLE, MAINS_FAILURE, SITE_OFFLINE,
    DOOR_OPEN, CABINET_OVERTEMP, TILT_EXCEEDED, BATTERY_LLVD_RISK,
)


def get_rule(name: str) -> Rule:
    """The rule called ``name``; ``UnknownRule`` names the known ones."""
    for rule in RULES:
        if rule.name == name:
            return rule
    raise UnknownRule(name, [r.name for r in RULES])


def check_rule_tables(tables: Mapping[str, Any] | None) -> None:
    """Refuse a ``[rules.<name>]`` table whose name is not a rule: a misspelling would
    otherwise leave that rule silently on its defaults.  A bad key inside a known table
    stays that rule's own error outcome (the other rules still run)."""
    known = {r.name: r for r in RULES}
    for name, table in (tables or {}).items():
        if name not in known:
            raise ThresholdError(f"unknown rule table 'rules.{name}' in the configuration"
                                 f" (known rules: {', '.join(sorted(known))})")
        if not isinstance(table, Mapping):
            raise ThresholdError(f"configuration key 'rules.{name}' must be a table")


def thresholds_for(rules: RulesSettings, rule: Rule) -> Thresholds:
    """The rule's thresholds: its ``[rules.<name>]`` table (in ``rules``, the ``[rules]``
    section) over the defaults.

    Here rather than in ``engine`` so that the dashboards can draw the same
    thresholds without importing the engine's I/O (InfluxDB, MQTT).
    """
    return rule.configure((rules.model_extra or {}).get(rule.name))
