"""Supplier identity on bills (credit code, address, contact) and a site's address.

Issue 10: the overcharging report names the landlord as a regulator needs it.
All four columns are nullable, so existing rows stay valid as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bills") as batch:
        batch.add_column(sa.Column("supplier_credit_code", sa.String(18), nullable=True))
        batch.add_column(sa.Column("supplier_address", sa.String(300), nullable=True))
        batch.add_column(sa.Column("supplier_contact", sa.String(200), nullable=True))
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("address", sa.String(300), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
