"""Baseline: registry, lifecycle, live state, reservations, tariffs, bills, flags.

A registry at this revision was made by ``create_all`` of the models as they
were then; nothing upgrades to it (new registries are created and stamped head).
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    raise RuntimeError("0001 is the baseline: registries are created at head, never upgraded to it")


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
