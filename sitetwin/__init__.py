"""sitetwin: 5G site telemetry, a digital twin of every site, rules and dashboards."""

from core import __version__

__all__ = ["__version__"]
