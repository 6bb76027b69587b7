"""Alarms: flags are acknowledged and assigned (``flag_actions`` keeps who and when), and
notifications go through an outbox (``notify_state``, ``notify_outbox``).

Flags that exist when this runs are marked as already announced, so that turning
notifications on does not send the whole history.  Each step is skipped if what it
adds is there already (a registry made by ``create_all`` of a newer model and stamped
older, as a pre-Alembic registry is), so the revision can run on either.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from twin.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    found = sa.inspect(op.get_bind())
    tables = set(found.get_table_names())
    columns = {c["name"] for c in found.get_columns("flags")}
    new_columns = [c for c in (sa.Column("acknowledged_by", sa.String(100), nullable=True),
                               sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
                               sa.Column("assignee", sa.String(100), nullable=True))
                   if c.name not in columns]
    if new_columns:
        with op.batch_alter_table("flags") as batch:
            for column in new_columns:
                batch.add_column(column)
    if "flag_actions" not in tables:
        _flag_actions()
    if "notify_state" not in tables:
        _notify_state()
    if "notify_outbox" not in tables:
        _notify_outbox()
    # What exists now counts as announced: enabling notifications must not replay history.
    op.execute(sa.text("INSERT INTO notify_state (flag_id, status, severity, seq, notified_at)"
                       " SELECT id, status, severity, 0, updated_at FROM flags"
                       " WHERE id NOT IN (SELECT flag_id FROM notify_state)"))


def _flag_actions() -> None:
    op.create_table(
        "flag_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("value", sa.String(100), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_flag_actions_flag_id", "flag_actions", ["flag_id"])


def _notify_state() -> None:
    op.create_table(
        "notify_state",
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("notified_at", UTCDateTime(), nullable=False),
    )


def _notify_outbox() -> None:
    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("flag_id", "seq", "channel", name="uq_notify_outbox_event"),
    )
    op.create_index("ix_notify_outbox_flag_id", "notify_outbox", ["flag_id"])
    op.create_index("ix_notify_outbox_due", "notify_outbox", ["status", "due_at"])


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
