"""docs/architecture.md's rule that import-linter cannot express: each package receives the
settings sections it uses, and only the shell holds the whole ``Settings``.

import-linter sees modules, not names, so a module that imports ``core.settings`` for
``RulesSettings`` and one that imports it for ``Settings`` look the same to it.  This test
reads the packages' source (``ast``, nothing is imported) for the name ``Settings``, for
parameters called ``settings`` that are untyped or typed ``Settings``/``Any``, and for a
web app's ``app.state.settings``.

``connectors`` is checked like the others: its functions take ``[mqtt]`` (``broker``) and
the collector a ``connectors.config.CollectorConfig`` of the sections it reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("connectors", "twin", "rules", "dashboards", "notify", "web", "adapters", "simulator", "exports")

# module -> why it may hold the whole Settings
ALLOWED = {
    "web/app.py": "the app factory serves every section; it hands each route its own part",
    "web/schema.py": "builds the app with the default Settings to print its OpenAPI schema",
}

_WHOLE = {"Settings", "Any"}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "alembic" not in p.parts)


def _annotation(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    text = ast.unparse(node).strip("'\"")
    return text.rsplit(".", 1)[-1]


def whole_settings(path: Path) -> list[str]:
    """Where ``path`` takes or imports the whole ``Settings``: one line each."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("core.settings", "sitetwin.config"):
            found += [f"line {node.lineno}: imports Settings" for a in node.names if a.name == "Settings"]
        elif isinstance(node, ast.Attribute) and (
                node.attr == "Settings" or (node.attr == "settings" and ast.unparse(node.value).endswith("state"))):
            found.append(f"line {node.lineno}: uses {ast.unparse(node)}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            for arg in args:
                kind = _annotation(arg.annotation)
                if kind == "Settings" or (arg.arg == "settings" and (kind is None or kind in _WHOLE)):
                    found.append(f"line {node.lineno}: {node.name}({arg.arg}: {kind or 'untyped'})")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_packages_receive_sections_not_the_whole_settings(path):
    name = str(path.relative_to(ROOT))
    found = whole_settings(path)
    if name in ALLOWED:
        assert found, f"{name} no longer takes Settings: strike it from ALLOWED"
    else:
        assert not found, (f"{name} takes the whole Settings ({'; '.join(found)}): give it the "
                           "section(s) it uses and let the shell pick them out")


def test_the_check_sees_each_way_of_taking_settings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from core.settings import RulesSettings, Settings\n"
        "import core.settings\n"
        "def a(rules: RulesSettings, settings: core.settings.Settings): ...\n"
        "def b(settings): ...\n"
        "def c(*, cfg: Settings): ...\n"
        "def d(rules: RulesSettings, settings: RulesSettings): ...\n"
        "zone = request.app.state.settings.time.zone\n",
        encoding="utf-8")
    found = whole_settings(sample)
    assert sorted(f.split(":")[0] for f in found) == ["line 1", "line 3", "line 3", "line 4", "line 5",
                                                      "line 7"]
    assert not any("d(" in f for f in found)  # a section called `settings` is a section
