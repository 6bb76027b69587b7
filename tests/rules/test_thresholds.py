"""The commented [rules.*] tables of the sample config document exactly the code's defaults."""

from __future__ import annotations

import re
import tomllib

import pytest

from rules.registry import RULES
from sitetwin.config import SAMPLE_CONFIG, load_settings


def _documented() -> dict:
    text = SAMPLE_CONFIG.read_text().split("\n[rules]\n", 1)[1]
    text = re.split(r"^\[", text, maxsplit=1, flags=re.MULTILINE)[0]  # up to the next section
    lines = [re.sub(r"\s+#(?![^\"]*\"$).*$", "", line[2:]) for line in text.splitlines()
             if line.startswith("# [rules.") or re.match(r"^# [a-z_]+ = ", line)]
    return tomllib.loads("\n".join(lines))["rules"]


def test_sample_documents_every_rule_with_its_defaults(tmp_path):
    documented = _documented()
    assert set(documented) == {r.name for r in RULES}
    for rule in RULES:
        # Loading the documented table must give exactly the defaults, key for key.
        assert rule.configure(documented[rule.name]) == rule.configure(None), rule.name
        assert set(documented[rule.name]) == set(rule.thresholds.model_fields), rule.name


def test_uncommented_tables_load_through_settings(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[rules]\nhold_off = "10m"\n[rules.interference]\nwarning_dbm = -108\n')
    s = load_settings(cfg)
    rule = next(r for r in RULES if r.name == "interference")
    assert rule.configure(s.rules.model_extra["interference"]).warning_dbm == -108
    assert s.rules.hold_off == 600


def test_a_misspelled_rule_table_is_refused_with_the_known_rules():
    from rules.errors import ThresholdError
    from rules.registry import check_rule_tables

    check_rule_tables({"overcharging": {"enabled": False}})
    with pytest.raises(ThresholdError, match=r"rules\.overcharge.*known rules: .*overcharging"):
        check_rule_tables({"overcharge": {"enabled": False}})
    with pytest.raises(ThresholdError, match="must be a table"):
        check_rule_tables({"interference": 5})
