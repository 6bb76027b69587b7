"""Supplier identity on bills (credit code, address, contact) and a site's address.

Issue 10: the overcharging report names the landlord as a regulator needs it.
All four columns are nullable, so existing rows stay valid as they are.  A
column that is already there is left alone: a registry stamped 0001 after the
fact (one made before Alembic) may have been created from newer models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = {
    "bills": (sa.Column("supplier_credit_code", sa.String(18), nullable=True),
              sa.Column("supplier_address", sa.String(300), nullable=True),
              sa.Column("supplier_contact", sa.String(200), nullable=True)),
    "sites": (sa.Column("address", sa.String(300), nullable=True),),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in _COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        missing = [c for c in columns if c.name not in present]
        if missing:
            with op.batch_alter_table(table) as batch:
                for column in missing:
                    batch.add_column(column)


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
