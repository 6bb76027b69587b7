"""The kernel every sitetwin package shares: error root, units, time, settings.

It imports nothing of the project, so ``connectors``, ``twin``, ``rules`` and
``dashboards`` can depend on it without depending on the shell (``sitetwin``,
the CLI and its wiring), which only the shell itself imports.

    core.errors    SitetwinError, UserError (the root of every package's error tree)
    core.units     durations ("1h30m") and sizes ("64MiB")
    core.timeutil  UTC inside, local time at the edges
    core.settings  the settings models and their loader
    core.jsonout   JSON for machines
    core.text      free text typed by people: control characters refused
    core.tariff    time-of-use tariff hours ("8-11;18-21"), read alike by import and rules
    core.states    a site's lifecycle State and a flag's FlagStatus, shared by every package
"""

__version__ = "0.1.0"  # the package's version (pyproject.toml); the shell and the web app show it
__all__ = ["__version__"]
