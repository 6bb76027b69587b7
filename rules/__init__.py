"""The rule engine: pure rule functions over InfluxDB window aggregates and registry facts,
turned into flags (open, update, resolve, review) in the twin database.

``RULES`` lists the registered rules; ``run_rules`` evaluates them (the engine);
``FlagBook`` is the flag lifecycle; ``rules.scheduler.start`` schedules them for
``sitetwin run``.
"""

from rules.errors import RuleError
from rules.finding import KINDS, Finding
from rules.registry import RULES, get_rule
from rules.rule import Facts, Rule, Thresholds

__all__ = ["KINDS", "RULES", "Facts", "Finding", "Rule", "RuleError", "Thresholds", "get_rule"]
