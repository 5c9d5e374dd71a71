"""SQLAlchemy's testing plugin, with the exdb dialect registered (run through run.py)."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from sqlalchemy.dialects import registry

sys.path.insert(0, os.path.dirname(__file__))  # exdb_requirements
registry.register("exdb", "exdb.sqlalchemy", "ExdbDialect")
pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing import provision  # noqa: E402
from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402, F403


# Provisioning: the nodes run.py started are the test database; there is no other driver to
# generate URLs for, and no database to create or drop per test run.
@provision.generate_driver_url.for_db("exdb")
def _driver_url(url: Any, driver: str, query_str: str | None) -> Any:
    return url if driver in (None, "", "exdb") else None


@provision.temp_table_keyword_args.for_db("exdb")
def _temp_table_keyword_args(cfg: Any, eng: Any) -> dict[str, Any]:
    return {"prefixes": ["TEMPORARY"]}


@provision.stop_test_class_outside_fixtures.for_db("exdb")
def _stop_test_class(config: Any, db: Any, cls: Any) -> None:
    db.dispose()
