"""Persistence: the SQLAlchemy base, the database handle and Alembic migrations."""
