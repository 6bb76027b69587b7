"""sitetwin: 5G site telemetry, a digital twin of every site, rules and dashboards."""

__version__ = "0.1.0"
__all__ = ["__version__"]
