"""The registered rules, in the order they run."""

from __future__ import annotations

from rules.errors import UnknownRule
from rules.interference import INTERFERENCE
from rules.lifecycle import LIFECYCLE
from rules.operations import MAINS_FAILURE, SITE_OFFLINE
from rules.overcharging import OVERBILLING, OVERCHARGING
from rules.reservations import RESERVATIONS
from rules.rule import Rule

__all__ = ["RULES", "get_rule"]

RULES: tuple[Rule, ...] = (
    OVERCHARGING, OVERBILLING, INTERFERENCE, RESERVATIONS, LIFECYCLE, SITE_OFFLINE, MAINS_FAILURE,
)


def get_rule(name: str) -> Rule:
    """The rule called ``name``; ``UnknownRule`` names the known ones."""
    for rule in RULES:
        if rule.name == name:
            return rule
    raise UnknownRule(name, [r.name for r in RULES])
