import tomllib
from pathlib import Path

from core import __version__


def test_the_version_is_the_packages():
    meta = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert __version__ == meta["project"]["version"]
