"""``cursor.copy_from`` and ``cursor.copy_to``, written once for every cursor: the sync doors
take :class:`CopyMethods`, the asyncio doors :class:`AsyncCopyMethods`. The work is in
:mod:`exdb.copying`, imported on the first call (it is not light)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["AsyncCopyMethods", "CopyMethods"]


class CopyMethods:
    """copy_from / copy_to on a synchronous cursor."""

    def copy_from(
        self,
        source: Any,
        table: str,
        columns: Sequence[str] | None = None,
        *,
        format: str = "csv",  # noqa: A002 - the name COPY's own option has
        header: bool = True,
        delimiter: str = ",",
        null: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Load a client-side file, file object or iterable of rows or lines into ``table``;
        the row count. All or nothing (see exdb.copying)."""
        from exdb.copying import CopyOptions, copy_from_job, run_sync

        options = CopyOptions(format, header, delimiter, null)
        return run_sync(self, copy_from_job(source, table, columns, options, progress))

    def copy_to(
        self,
        dest: Any,
        table_or_query: str,
        *,
        format: str = "csv",  # noqa: A002 - the name COPY's own option has
        header: bool = True,
        delimiter: str = ",",
        null: str = "",
    ) -> int:
        """Write a table's rows, or a query's, to a client-side path or file object; the row
        count."""
        from exdb.copying import CopyOptions, copy_to_job, run_sync

        options = CopyOptions(format, header, delimiter, null)
        return run_sync(self, copy_to_job(dest, table_or_query, options))


class AsyncCopyMethods:
    """copy_from / copy_to on an asyncio cursor (the file is read in a thread)."""

    async def copy_from(
        self,
        source: Any,
        table: str,
        columns: Sequence[str] | None = None,
        *,
        format: str = "csv",  # noqa: A002 - the name COPY's own option has
        header: bool = True,
        delimiter: str = ",",
        null: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Load a client-side file, file object or iterable of rows or lines into ``table``;
        the row count. All or nothing (see exdb.copying)."""
        from exdb.copying import CopyOptions, copy_from_job, run_async

        options = CopyOptions(format, header, delimiter, null)
        return await run_async(self, copy_from_job(source, table, columns, options, progress))

    async def copy_to(
        self,
        dest: Any,
        table_or_query: str,
        *,
        format: str = "csv",  # noqa: A002 - the name COPY's own option has
        header: bool = True,
        delimiter: str = ",",
        null: str = "",
    ) -> int:
        """Write a table's rows, or a query's, to a client-side path or file object; the row
        count."""
        from exdb.copying import CopyOptions, copy_to_job, run_async

        options = CopyOptions(format, header, delimiter, null)
        return await run_async(self, copy_to_job(dest, table_or_query, options))
