"""Grid ratings and history: feeders, substations, reservation and supply changes.

An existing registry keeps what it had: each site's current reservation becomes its
first reservation change and its current supply its first supply change, undated and
in force "since always" (``twin.history.SINCE_ALWAYS``; ``recorded_at`` keeps when the
value was written), so a past report sees today's values until a dated change says
otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from twin.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A registry stamped 0001 may already have these tables if it was created from newer
    # models (stamped by hand, or by a test): create and seed only what is missing.
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "reservation_changes" not in have:
        _reservation_changes()
    if "supply_changes" not in have:
        _supply_changes()
    if "feeders" not in have:
        _feeders()
    if "substations" not in have:
        op.create_table(
            "substations",
            sa.Column("substation", sa.String(100), primary_key=True),
            sa.Column("rated_kw", sa.Float, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        )


def _reservation_changes() -> None:
    op.create_table(
        "reservation_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("site_id", sa.String(64), sa.ForeignKey("sites.site_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("dated", sa.Boolean, nullable=False),
        sa.Column("declared_kw", sa.Float, nullable=False),
        sa.Column("reserved_kw", sa.Float, nullable=False),
        sa.Column("feeder", sa.String(100), nullable=False),
        sa.Column("substation", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("site_id", "effective_from", name="uq_reservation_changes"),
    )
    op.create_index("ix_reservation_changes_site_id", "reservation_changes", ["site_id"])
    # Today's values become the first history rows (recorded_at is copied as stored, so
    # each backend keeps its own representation of UTC).
    op.execute(sa.text("INSERT INTO reservation_changes (site_id, effective_from, dated, declared_kw,"
                       " reserved_kw, feeder, substation, status, recorded_at)"
                       " SELECT site_id, :since, false, declared_kw, reserved_kw, feeder, substation,"
                       " status, updated_at FROM reservations").bindparams(_since()))


def _supply_changes() -> None:
    op.create_table(
        "supply_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("site_id", sa.String(64), sa.ForeignKey("sites.site_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("supply", sa.String(16), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("site_id", "effective_from", name="uq_supply_changes"),
    )
    op.create_index("ix_supply_changes_site_id", "supply_changes", ["site_id"])
    op.execute(sa.text("INSERT INTO supply_changes (site_id, effective_from, supply, recorded_at)"
                       " SELECT site_id, :since, supply, created_at FROM sites").bindparams(_since()))


def _since() -> sa.BindParameter[datetime]:
    return sa.bindparam("since", datetime(1970, 1, 1, tzinfo=UTC), type_=UTCDateTime())


def _feeders() -> None:
    op.create_table(
        "feeders",
        sa.Column("feeder", sa.String(100), primary_key=True),
        sa.Column("substation", sa.String(100), nullable=False),
        sa.Column("rated_kw", sa.Float, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_feeders_substation", "feeders", ["substation"])


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
