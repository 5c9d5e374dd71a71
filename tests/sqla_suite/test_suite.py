"""SQLAlchemy's own dialect compliance suite, as it ships (sqlalchemy.testing.suite)."""

from sqlalchemy.testing.suite import *  # noqa: F403
