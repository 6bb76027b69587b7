"""Command groups of the ``sitetwin`` CLI; each module exposes ``register(commands, reports)``."""
