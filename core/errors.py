"""The root of every error sitetwin reports to a person.

    SitetwinError
    ├── UserError              bad arguments or input named on the command line
    ├── core.settings.ConfigError        a bad configuration key
    ├── sitetwin.services.ServiceError   a local service would not start or stop
    ├── connectors.errors.ConnectorError MQTT, InfluxDB, spool, dead letter, CSV
    ├── twin.errors.TwinError            registry, lifecycle, imports
    ├── rules.errors.RuleError           rule engine, flags
    ├── notify.errors.NotifyError        notification channels and the outbox
    └── dashboards.errors.DashboardError building and pushing dashboards

The CLI turns any of these into a one-line message on stderr and exit code 1.
"""

__all__ = ["SitetwinError", "UserError"]


class SitetwinError(Exception):
    """Root of sitetwin's own errors: the message is meant for a person."""


class UserError(SitetwinError):
    """The command line or an input file asked for something impossible."""
