"""Alembic environment: runs on the connection that memory.db hands over.

Logging is not configured here on purpose: the application owns logging.
"""

from alembic import context

from memory.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through memory.db.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
