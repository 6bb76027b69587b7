"""The rule engine: pure rule functions over InfluxDB window aggregates and registry facts,
turned into flags (open, update, resolve, review) in the twin database.

``RULES`` lists the registered rules; ``run_rules`` evaluates them (the engine);
``FlagBook`` is the flag lifecycle; ``rules.scheduler.start`` schedules them for
``sitetwin run``.
"""

from rules.errors import RuleError
from rules.finding import KINDS, Finding

# The registry and the rule modules pull in pandas and NumPy; they load on first use,
# so that commands which only need the flag kinds (the CLI's --help) start quickly.
_LAZY = {"RULES": "rules.registry", "get_rule": "rules.registry", "Facts": "rules.rule",
         "Rule": "rules.rule", "Thresholds": "rules.rule"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rules' has no attribute {name!r}")

__all__ = ["KINDS", "RULES", "Facts", "Finding", "Rule", "RuleError", "Thresholds", "get_rule"]
