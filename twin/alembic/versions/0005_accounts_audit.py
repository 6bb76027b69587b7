"""Accounts and audit: users, API tokens, web sessions, the append-only audit log, and the
acknowledgement and assignee of a flag.

The audit log's UPDATE/DELETE refusal is a trigger on both backends
(``twin.models.AUDIT_APPEND_ONLY_DDL``), installed here for registries made before it.
Each step is skipped when its table or column is already there, so a registry that
was stamped at an older revision while already holding them (a pre-Alembic registry
made by a newer sitetwin) upgrades without error.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from twin.models import AUDIT_APPEND_ONLY_DDL, JSONType, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "users" not in tables:
        _create_tables()
    flag_columns = {c["name"] for c in inspector.get_columns("flags")}
    for name, type_ in (("acknowledged_by", sa.String(100)), ("acknowledged_at", UTCDateTime()),
                        ("assignee", sa.String(100))):
        if name not in flag_columns:
            op.add_column("flags", sa.Column(name, type_))


def _create_tables() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200)),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("lang", sa.String(8)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime()),
        sa.Column("revoked_at", UTCDateTime()),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("client_ip", sa.String(64)),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False, index=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(200)),
        sa.Column("before", JSONType),
        sa.Column("after", JSONType),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_audit_log_target", "audit_log", ["target_type", "target_id"])
    bind = op.get_bind()
    for statement in AUDIT_APPEND_ONLY_DDL.get(bind.dialect.name, ()):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
