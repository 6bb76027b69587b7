"""A producer of test and demo data: a seeded synthetic city and its telemetry.

``simulator.fleet`` makes the city (sites, meters, cells, reservations,
tariffs, bills) and writes its registry CSVs; ``simulator.telemetry`` makes
readings that agree with those bills, with planted anomalies per scenario.
They are published with ``connectors.publisher`` like any device's readings.
"""
