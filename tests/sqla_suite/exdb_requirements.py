"""What exdb supports, for SQLAlchemy's compliance suite: SuiteRequirements' defaults, with the
SQLite features exdb serves opened and what it does not serve closed, each with its reason."""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements


def _distributed(config: Any) -> bool:
    """Whether the suite runs against several nodes (a DistributedConnection)."""
    return "nodes=" in str(config.db.url)


_ONE_NODE_ONLY = exclusions.skip_if(
    _distributed,
    "refused on a distributed connection (a view over sharded tables would see one shard's rows)",
)


class Requirements(SuiteRequirements):
    """SQLAlchemy's suite requirements, with exdb's answers."""

    # --- what exdb does not have ---------------------------------------------------------------

    @property
    def schemas(self) -> Any:
        return exclusions.closed()  # exdb does not ATTACH databases: one schema, main

    @property
    def views(self) -> Any:
        return _ONE_NODE_ONLY

    @property
    def view_reflection(self) -> Any:
        return _ONE_NODE_ONLY

    @property
    def view_column_reflection(self) -> Any:
        return _ONE_NODE_ONLY

    @property
    def savepoints(self) -> Any:
        return exclusions.closed()  # SAVEPOINT is not sent to the shards: commit()/rollback()

    @property
    def two_phase_transactions(self) -> Any:
        return exdb_no("no two-phase commit across nodes yet")

    @property
    def comment_reflection(self) -> Any:
        return exclusions.closed()  # SQLite has no comments

    # --- SQLite features the shards have ------------------------------------------------------

    @property
    def foreign_key_constraint_reflection(self) -> Any:
        return exclusions.open()

    @property
    def foreign_key_constraint_option_reflection_ondelete(self) -> Any:
        return exclusions.open()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self) -> Any:
        return exclusions.open()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self) -> Any:
        return exclusions.open()

    @property
    def fk_constraint_option_reflection_onupdate_restrict(self) -> Any:
        return exclusions.open()

    @property
    def unique_constraint_reflection(self) -> Any:
        return exclusions.open()

    @property
    def check_constraint_reflection(self) -> Any:
        return exclusions.open()

    @property
    def temp_table_names(self) -> Any:
        return exclusions.open()

    @property
    def temporary_tables(self) -> Any:
        return exclusions.open()

    @property
    def temp_table_reflection(self) -> Any:
        return exclusions.open()

    @property
    def index_reflection(self) -> Any:
        return exclusions.open()

    @property
    def json_type(self) -> Any:
        return exclusions.open()

    @property
    def ctes(self) -> Any:
        return exclusions.open()

    @property
    def ctes_with_update_delete(self) -> Any:
        return exclusions.open()

    @property
    def insert_returning(self) -> Any:
        return exclusions.open()

    @property
    def update_returning(self) -> Any:
        return exclusions.open()

    @property
    def delete_returning(self) -> Any:
        return exclusions.open()

    @property
    def window_functions(self) -> Any:
        return exclusions.open()

    @property
    def datetime_microseconds(self) -> Any:
        return exclusions.open()

    @property
    def implicit_decimal_binds(self) -> Any:
        return exclusions.closed()  # SQLite stores decimals as floats

    @property
    def precision_numerics_enotation_large(self) -> Any:
        return exclusions.closed()  # SQLite stores decimals as floats

    @property
    def precision_numerics_many_significant_digits(self) -> Any:
        return exclusions.closed()  # SQLite stores decimals as floats

    @property
    def precision_numerics_retains_significant_digits(self) -> Any:
        return exclusions.closed()  # SQLite stores decimals as floats


def exdb_no(reason: str) -> Any:
    """Closed, with the reason."""
    return exclusions.skip_if(lambda config: True, reason)
