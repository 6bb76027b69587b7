"""docs/contracts.md names exactly the commands, flag kinds, MQTT fields and CSV columns the code has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from connectors.reading import InterferenceReading, PowerReading, TowerReading
from rules.finding import KINDS
from sitetwin.cli import build_parser
from twin import imports

DOC = (Path(__file__).parents[1] / "docs" / "contracts.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = DOC.index(heading)
    nxt = re.search(r"^#{2,3} ", DOC[start + len(heading):], re.MULTILINE)
    return DOC[start:start + len(heading) + nxt.start()] if nxt else DOC[start:]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _commands(sub, (*prefix, name))
                found |= inner or {" ".join((*prefix, name))}
    return found


def test_every_command_is_documented_and_every_documented_command_exists():
    code = _commands(build_parser())
    table = _section("## 3. Command line")
    documented = set()
    for cell in re.findall(r"^\| `sitetwin ([^`]+)`", table, re.MULTILINE):
        words = [w for w in cell.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
        if "services" in words:
            words = ["services"]
        documented.add(" ".join(words))
    assert documented == code


def test_flag_kinds():
    table = _section("## 4. Flags")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert documented == set(KINDS)


@pytest.mark.parametrize("model", [TowerReading, PowerReading, InterferenceReading])
def test_mqtt_fields(model):
    table = _section(f"### `{model.stream}`")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    fields = set(model.model_fields) - {"site_id"}
    assert documented == fields


@pytest.mark.parametrize("schema", [*imports.SCHEMAS.values(), imports.TARGETS],
                         ids=lambda s: s.name)
def test_csv_columns(schema):
    text = _section(f"### `{schema.name}.csv`") if f"### `{schema.name}.csv`" in DOC else \
        _section(f"`{schema.name}.csv`")
    documented = set(re.findall(r"`([a-z_]+)`", text)) - {f"{schema.name}"}
    columns = {c.name for c in schema.columns}
    missing = columns - documented
    assert not missing, f"{schema.name}.csv columns not in docs/contracts.md: {sorted(missing)}"
