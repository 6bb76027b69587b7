"""Alembic's entry point for developers (``alembic -c twin/alembic.ini ...``).

sitetwin itself runs migrations from ``twin.migrations`` on an open connection
and never reads this file; it is here so that ``alembic revision --autogenerate``
can compare the models with a registry given by ``SITETWIN_TWIN__URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from twin.models import Base

url = os.environ.get("SITETWIN_TWIN__URL") or "sqlite:///.sitetwin/twin.sqlite"
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
