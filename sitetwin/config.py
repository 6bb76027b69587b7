"""The shell's view of the configuration: the kernel's settings plus the sample file.

The models and the loader live in ``core.settings`` so that every package can
use them without importing the shell; ``sitetwin.sample.toml`` beside this
module documents every key with its default.
"""

from __future__ import annotations

from pathlib import Path

from core.settings import *  # noqa: F403 - the shell re-exports the kernel's settings
from core.settings import __all__ as _settings_all

__all__ = ["SAMPLE_CONFIG", *_settings_all]

SAMPLE_CONFIG = Path(__file__).with_name("sitetwin.sample.toml")
