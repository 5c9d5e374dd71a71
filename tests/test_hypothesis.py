"""Generated differential testing: Hypothesis writes SELECT statements from a small grammar over
the tables of :mod:`oracle`, and every one must answer on the cluster exactly as on one plain
database holding all the rows (SQLite over 2 and 3 shards, DuckDB over 2 shards).

The grammar covers projections of columns and expressions, WHERE with AND/OR/NOT of
comparisons (constants sometimes bound as ``?`` parameters), IS NULL, IN lists, BETWEEN and
pinned distribution keys; aggregates (plain and DISTINCT, TOTAL on SQLite), GROUP BY, HAVING;
ORDER BY (total, so that the order is deterministic, or partial and then compared as a multiset),
LIMIT/OFFSET after a total order only; DISTINCT; co-located, non-co-located and reference joins;
set operations; scalar, IN and EXISTS subqueries; window functions ordered by a unique key.
Nothing whose answer one plain database may legitimately vary is generated (LIMIT without a
total order, GROUP_CONCAT, bare columns next to aggregates, ties between int and real values).

Environment:

- ``EXDB_HYPOTHESIS_EXAMPLES``: generated queries per cluster (default 300);
- ``EXDB_HYPOTHESIS_SEED``: replay a run; otherwise each run draws a new seed, which a failure
  reports (with the minimal failing query), also when ``CI`` is set.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

import exdb
from exdb.cluster import LocalCluster

from oracle import check, load, plain_database

EXAMPLES = int(os.environ.get("EXDB_HYPOTHESIS_EXAMPLES") or 300)
SEED = int(os.environ.get("EXDB_HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]

# --- the schema as the generator sees it ------------------------------------------------------

#: Column kinds: "int", "real", "text"; "bool" for comparisons in a projection. Values of
#: different kinds are never compared or mixed in one output column (DuckDB refuses text against
#: integer, and SQLite's 1 = 1.0 would make the choice between them arbitrary).
TABLES: dict[str, list[tuple[str, str]]] = {
    "orders": [("id", "int"), ("cust", "int"), ("amount", "real"), ("qty", "int"), ("tag", "text")],
    "customers": [("cid", "int"), ("name", "text"), ("region", "text")],
    "regions": [("region", "text"), ("label", "text")],
    "events": [("a", "int"), ("b", "text"), ("v", "real")],
    "items": [("oid", "int"), ("n", "int"), ("price", "real")],
    "empty_t": [("k", "int"), ("x", "int")],
}
#: A unique key of each table: a total order of its rows (window ORDER BY, ORDER BY + LIMIT).
KEYS = {
    "orders": ["id"],
    "customers": ["cid"],
    "regions": ["region"],
    "events": ["v"],
    "items": ["oid", "n"],
    "empty_t": ["k"],
}
#: Distribution columns, which a WHERE can pin to a shard.
DISTRIBUTION = {"orders": "id", "customers": "cid", "items": "oid"}
ALIASES = {
    "orders": "o",
    "customers": "c",
    "regions": "r",
    "events": "e",
    "items": "i",
    "empty_t": "t",
}
#: Constants worth comparing each column with: values present in the data, and some absent.
#: Every float is a multiple of 1/4, as the data is, so that sums are exact in any order.
POOLS: dict[str, tuple[Any, ...]] = {
    "id": (1, 2, 3, 17, 42, 61, 99, 120, 0, 500),
    "cust": (0, 1, 3, 6, 9),
    "amount": (10.0, 0.0, 12.5, 25.0, 37.75, 49.75, 60.0),
    "qty": (0, 1, 2, 3, 4),
    "tag": ("red", "green", "blue", "zzz"),
    "cid": (0, 1, 4, 8, 9),
    "name": ("c1", "c4", "c8", "zz"),
    "region": ("north", "south", "east", "west"),
    "label": ("N", "S", "E", "W"),
    "a": (0, 1, 3, 5, 6),
    "b": ("e0", "e1", "e3", "e9"),
    "v": (0.0, 7.5, 15.0, 29.5, 40.0),
    "oid": (1, 4, 40, 118, 2),
    "n": (1, 2, 3, 4),
    "price": (0.5, 5.5, 10.5, 16.5),
    "k": (1, 2),
    "x": (0, 1),
}
#: Constants for aggregates in HAVING.
AGG_POOL: tuple[Any, ...] = (0, 1, 2, 5, 10, 20, 50, 100, 250.5)


@dataclasses.dataclass(frozen=True)
class Col:
    """A column (or expression) of a source: its SQL, its kind and constants to compare with."""

    sql: str
    kind: str
    pool: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class Source:
    """A FROM clause: its columns, a unique key of its rows and its pinnable columns."""

    sql: str
    cols: tuple[Col, ...]
    key: tuple[str, ...]
    pins: tuple[str, ...] = ()
    where: str | None = None  # a join condition written in WHERE
    table: str | None = None  # the table of a single-table source
    gathered: bool = False  # a join that is not co-located: exdb gathers the rows


def _cols(table: str, alias: str | None) -> tuple[Col, ...]:
    prefix = f"{alias}." if alias else ""
    return tuple(Col(prefix + name, kind, POOLS[name]) for name, kind in TABLES[table])


def table_source(table: str, alias: str | None) -> Source:
    """One table, its columns qualified by ``alias`` (or not, without one)."""
    prefix = f"{alias}." if alias else ""
    pins = (prefix + DISTRIBUTION[table],) if table in DISTRIBUTION else ()
    sql = f"{table} {alias}" if alias else table
    key = tuple(prefix + k for k in KEYS[table])
    return Source(sql, _cols(table, alias), key, pins, table=table)


def join_source(
    sql: str, tables: Sequence[str], key: Sequence[str], where: str | None = None
) -> Source:
    """Tables joined (by ``sql``, or by ``where`` for a comma join), aliased as in ALIASES."""
    cols = tuple(c for t in tables for c in _cols(t, ALIASES[t]))
    spread = [t for t in tables if t != "regions"]
    gathered = len(spread) > 1 and set(spread) != {"orders", "items"}
    return Source(sql, cols, tuple(key), (), where, gathered=gathered)


SINGLE = [table_source(t, alias) for t in TABLES for alias in (ALIASES[t], None)]
JOINS = [
    # co-located: orders and items are both distributed by the order id
    join_source("orders o JOIN items i ON o.id = i.oid", ["orders", "items"], ["o.id", "i.n"]),
    join_source("orders o LEFT JOIN items i ON i.oid = o.id", ["orders", "items"], ["o.id", "i.n"]),
    join_source("items i JOIN orders o ON i.oid = o.id", ["items", "orders"], ["i.oid", "i.n"]),
    join_source("orders o, items i", ["orders", "items"], ["o.id", "i.n"], "o.id = i.oid"),
    # not co-located: orders by id, customers by cid
    join_source("orders o JOIN customers c ON o.cust = c.cid", ["orders", "customers"], ["o.id"]),
    join_source(
        "customers c LEFT JOIN orders o ON o.cust = c.cid",
        ["customers", "orders"],
        ["c.cid", "o.id"],
    ),
    join_source(
        "orders o JOIN items i ON o.id = i.oid JOIN customers c ON o.cust = c.cid",
        ["orders", "items", "customers"],
        ["o.id", "i.n"],
    ),
    # a reference table
    join_source(
        "customers c JOIN regions r ON c.region = r.region", ["customers", "regions"], ["c.cid"]
    ),
    join_source(
        "customers c LEFT JOIN regions r ON c.region = r.region",
        ["customers", "regions"],
        ["c.cid"],
    ),
    # a keyless table with a distributed one
    join_source("events e JOIN orders o ON o.qty = e.a", ["events", "orders"], ["e.v", "o.id"]),
]
#: Sources of subqueries, aliased apart from the outer query's.
SUBQUERY_SOURCES = [table_source(t, ALIASES[t] + "2") for t in TABLES]


def _class(kind: str) -> str:
    """Kinds that may be compared with each other."""
    return "num" if kind in ("int", "real") else kind


def literal(value: Any) -> str:
    """A constant as SQL."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Item:
    """An output column (or an aggregate): its SQL, kind, optional alias and the constants
    worth comparing it with."""

    sql: str
    kind: str
    alias: str | None = None
    pool: tuple[Any, ...] = ()

    def render(self) -> str:
        """The SELECT list entry."""
        return f"{self.sql} AS {self.alias}" if self.alias else self.sql


@dataclasses.dataclass(frozen=True)
class Query:
    """A generated statement, its parameters and whether its ORDER BY fixes the row order."""

    sql: str
    params: tuple[Any, ...] | None
    ordered: bool


# --- the grammar ------------------------------------------------------------------------------


class Builder:
    """Draws one statement; parameters are collected in the order their ``?`` marks appear,
    so every clause is built in its textual order."""

    def __init__(self, draw: Draw[Any], engine: str) -> None:
        self.draw = draw
        self.engine = engine
        # Whether to use constructs that exdb answers by gathering every row (set operations,
        # subqueries, windows, joins that are not co-located): cheap on SQLite, but about
        # 0.15 s each on DuckDB (its final stage inserts row by row), so rarer there.
        self.general = engine == "sqlite" or self.chance(4)
        self.params: list[Any] = []
        self.aliases = 0

    # small helpers

    def pick(self, options: Sequence[T]) -> T:
        """One of the options (shrinks towards the first)."""
        return self.draw(st.sampled_from(options))  # type: ignore[no-any-return]

    def chance(self, tenths: int) -> bool:
        """True with probability ``tenths``/10 (shrinks towards False)."""
        return bool(self.draw(st.integers(0, 9)) >= 10 - tenths)

    def count(self, low: int, high: int) -> int:
        """An integer in [low, high] (shrinks towards low)."""
        return int(self.draw(st.integers(low, high)))

    def value(self, value: Any, may_bind: bool = True) -> str:
        """A constant, written in the SQL or bound as a ``?`` parameter."""
        if may_bind and value is not None and self.chance(3):
            self.params.append(value)
            return "?"
        return literal(value)

    def alias(self) -> str | None:
        """Sometimes an output alias (c0, c1, ...)."""
        if not self.chance(2):
            return None
        self.aliases += 1
        return f"c{self.aliases - 1}"

    def source(self) -> Source:
        """A FROM clause: mostly one table, sometimes a join."""
        if self.chance(3):
            return self.pick([j for j in JOINS if self.general or not j.gathered])
        return self.pick(SINGLE)

    # expressions

    def numeric(self, src: Source, depth: int) -> Item:
        """A numeric expression over the source's columns: +, - and * of columns and constants."""
        cols = [c for c in src.cols if _class(c.kind) == "num"]
        if depth <= 0 or not self.chance(4):
            if cols and not self.chance(1):
                col = self.pick(cols)
                return Item(col.sql, col.kind)
            number = self.pick([1, 2, 3, 10, 0.5, 1.5, 2.25])
            return Item(literal(number), "real" if isinstance(number, float) else "int")
        left = self.numeric(src, depth - 1)
        op = self.pick(["+", "-", "*"])
        right = self.numeric(src, depth - 1)
        kind = "real" if "real" in (left.kind, right.kind) else "int"
        wrap = lambda s: f"({s})" if " " in s else s  # noqa: E731
        return Item(f"{wrap(left.sql)} {op} {wrap(right.sql)}", kind)

    @staticmethod
    def classes(src: Source) -> set[str]:
        """The comparable classes of the source's columns."""
        return {_class(c.kind) for c in src.cols}

    def comparable_pair(self, src: Source) -> tuple[Col, Col] | None:
        """Two columns of the source that may be compared, or None."""
        pairs = [
            (a, b)
            for a in src.cols
            for b in src.cols
            if a.sql != b.sql and _class(a.kind) == _class(b.kind)
        ]
        return self.pick(pairs) if pairs else None

    def item(self, src: Source, subqueries: bool, windows: bool) -> Item:
        """One entry of a SELECT list."""
        choice = self.pick(
            ["column", "numeric", "column", "compare", "subquery", "window", "window"]
        )
        if choice == "numeric":
            return dataclasses.replace(self.numeric(src, 2), alias=self.alias())
        if choice == "compare":
            col = self.pick(src.cols)
            op = self.pick(["=", "<>", "<", ">=", ">"])
            return Item(f"{col.sql} {op} {self.value(self.pick(col.pool), False)}", "bool")
        if choice == "subquery" and subqueries and self.general:
            return dataclasses.replace(self.scalar_subquery(src), alias=self.alias())
        if choice == "window" and windows and self.general:
            return dataclasses.replace(self.window(src), alias=self.alias())
        col = self.pick(src.cols)
        return Item(col.sql, col.kind, self.alias())

    def window(self, src: Source) -> Item:
        """A window function, ordered by a unique key so that its value is deterministic."""
        function = self.pick(["ROW_NUMBER()", "SUM", "RANK()", "COUNT(*)", "MAX"])
        kind = "int"
        numbers = [c for c in src.cols if _class(c.kind) == "num"]
        if function in ("SUM", "MAX") and not numbers:
            function = "ROW_NUMBER()"
        if function in ("SUM", "MAX"):
            arg = self.pick(numbers)
            function = f"{function}({arg.sql})"
            kind = arg.kind
        parts = []
        if self.chance(5):
            parts.append(f"PARTITION BY {self.pick(src.cols).sql}")
        if function.endswith("()") or self.chance(7):
            desc = self.chance(3)
            parts.append("ORDER BY " + ", ".join(k + (" DESC" if desc else "") for k in src.key))
        return Item(f"{function} OVER ({' '.join(parts)})", kind)

    def scalar_subquery(self, src: Source) -> Item:
        """A scalar subquery in a SELECT list, sometimes correlated with the outer row."""
        function = self.pick(["COUNT(*)", "MAX", "SUM"])
        sub = self.pick(
            [s for s in SUBQUERY_SOURCES if s.table != "regions" or function == "COUNT(*)"]
        )
        kind = "int"
        if function != "COUNT(*)":
            arg = self.pick([c for c in sub.cols if _class(c.kind) == "num"])
            function = f"{function}({arg.sql})"
            kind = arg.kind
        sql = f"SELECT {function} FROM {sub.sql}"
        pairs = [(a, b) for a in sub.cols for b in src.cols if _class(a.kind) == _class(b.kind)]
        if pairs and self.chance(6):
            inner, outer = self.pick(pairs)
            sql += f" WHERE {inner.sql} = {outer.sql}"
        return Item(f"({sql})", kind)

    # conditions

    def condition(self, src: Source, depth: int, subqueries: bool) -> str:
        """A boolean condition over the source's columns."""
        choice = self.pick(
            ["compare", "null", "in", "columns", "between", "and", "or", "not", "subquery"]
        )
        if choice in ("and", "or") and depth > 0:
            left = self.condition(src, depth - 1, subqueries)
            right = self.condition(src, depth - 1, subqueries)
            return f"({left} {choice.upper()} {right})"
        if choice == "not" and depth > 0:
            return f"NOT ({self.condition(src, depth - 1, subqueries)})"
        if choice == "subquery" and subqueries and self.general:
            return self.subquery_condition(src)
        col = self.pick(src.cols)
        if choice == "null":
            return f"{col.sql} IS {'NOT ' if self.chance(5) else ''}NULL"
        if choice == "in":
            values = self.draw(st.lists(st.sampled_from((*col.pool, None)), min_size=1, max_size=4))
            listed = ", ".join(self.value(v) for v in values)
            return f"{col.sql} {'NOT ' if self.chance(3) else ''}IN ({listed})"
        if choice == "columns" and (pair := self.comparable_pair(src)) is not None:
            op = self.pick(["=", "<>", "<", "<=", ">", ">="])
            return f"{pair[0].sql} {op} {pair[1].sql}"
        if choice == "between":
            low = self.value(self.pick(col.pool))
            high = self.value(self.pick(col.pool))
            return f"{col.sql} BETWEEN {low} AND {high}"
        op = self.pick(["=", "<>", "<", "<=", ">", ">="])
        if _class(col.kind) == "num" and self.chance(2):
            expr = self.numeric(src, 1).sql
            return f"{expr} {op} {self.value(self.pick(col.pool))}"
        return f"{col.sql} {op} {self.value(self.pick(col.pool))}"

    def subquery_condition(self, src: Source) -> str:
        """IN (SELECT ...), a comparison with a scalar subquery, or a correlated EXISTS."""
        sub = self.pick(
            [s for s in SUBQUERY_SOURCES if {_class(c.kind) for c in s.cols} & self.classes(src)]
        )
        pairs = [(a, b) for a in src.cols for b in sub.cols if _class(a.kind) == _class(b.kind)]
        outer, inner = self.pick(pairs)
        form = self.pick(["in", "scalar", "exists"])
        if form == "exists":
            where = f"{inner.sql} = {outer.sql}"
            if self.chance(4):
                where += f" AND {self.condition(sub, 0, False)}"
            negate = "NOT " if self.chance(3) else ""
            return f"{negate}EXISTS (SELECT 1 FROM {sub.sql} WHERE {where})"
        if form == "scalar":
            functions = ["MIN", "MAX"] + (
                ["AVG", "SUM", "COUNT"] if _class(inner.kind) == "num" else []
            )
            function = self.pick(functions)
            op = self.pick(["=", "<>", "<", "<=", ">", ">="])
            sql = f"{outer.sql} {op} (SELECT {function}({inner.sql}) FROM {sub.sql}"
        else:
            negate = "NOT " if self.chance(3) else ""
            sql = f"{outer.sql} {negate}IN (SELECT {inner.sql} FROM {sub.sql}"
        if self.chance(5):
            sql += f" WHERE {self.condition(sub, 1, False)}"
        return sql + ")"

    def pin(self, src: Source) -> str:
        """Pin a distribution column: ``col = c`` or ``col IN (c, ...)``."""
        col = self.pick(src.pins)
        pool = POOLS[col.split(".")[-1]]
        values = self.draw(st.lists(st.sampled_from((*pool, None)), min_size=1, max_size=4))
        forms: list[Callable[[Any], Any]] = [lambda v: v, lambda v: float(v)]
        if self.engine == "sqlite":  # '17' is the key 17 in an INTEGER column (DuckDB refuses)
            forms.append(str)
        rendered = [self.value(self.pick(forms)(v) if v is not None else None) for v in values]
        if len(rendered) == 1 and self.chance(7):
            if self.chance(2):
                return f"{rendered[0]} = {col}"
            return f"{col} = {rendered[0]}"
        return f"{col} IN ({', '.join(rendered)})"

    def where(self, src: Source, subqueries: bool = True) -> str:
        """A WHERE clause (maybe empty): join condition, pinned key, other conditions."""
        parts = [src.where] if src.where else []
        if src.pins and self.chance(3):
            parts.append(self.pin(src))
        if self.chance(6):
            parts.append(self.condition(src, 2, subqueries))
        return f" WHERE {' AND '.join(parts)}" if parts else ""

    # ORDER BY and LIMIT

    def direction(self) -> str:
        """ASC/DESC and sometimes NULLS FIRST/LAST."""
        out = self.pick(["", " ASC", " DESC"])
        if self.chance(2):
            out += self.pick([" NULLS FIRST", " NULLS LAST"])
        return out

    def order_term(self, items: Sequence[Item], index: int, positional: bool) -> str:
        """How ORDER BY names the output column ``index``: position, alias or expression."""
        item = items[index]
        how = "position" if positional else self.pick(["position", "alias", "expression"])
        if how == "alias" and item.alias:
            return item.alias
        if how == "expression":
            return item.sql
        return str(index + 1)

    def order_by(
        self, items: Sequence[Item], positional: bool, key: Sequence[str] | None = None
    ) -> tuple[str, bool]:
        """An ORDER BY clause and whether it orders the rows totally: by every output column,
        by a unique key of the source (``key``), or only partly."""
        mode = self.pick(["outputs", "key", "partial"])
        if mode == "key" and key is not None:
            terms = []
            if self.chance(5):
                terms.append(self.order_term(items, self.count(0, len(items) - 1), positional))
            terms.extend(key)
            total = True
        else:
            order = self.draw(st.permutations(range(len(items))))
            total = mode != "partial"
            if not total:
                order = order[: self.count(1, len(items))]
                total = len(order) == len(items)
            terms = [self.order_term(items, i, positional) for i in order]
        return " ORDER BY " + ", ".join(t + self.direction() for t in terms), total

    def limit(self) -> str:
        """LIMIT n, sometimes OFFSET m."""
        sql = f" LIMIT {self.value(self.count(0, 20))}"
        if self.chance(4):
            sql += f" OFFSET {self.value(self.pick([0, 1, 3, 10, 50, 119, 200]))}"
        return sql

    def tail(
        self, items: Sequence[Item], positional: bool, key: Sequence[str] | None = None
    ) -> tuple[str, bool]:
        """Maybe ORDER BY, and LIMIT/OFFSET only after a total one."""
        if not self.chance(6):
            return "", False
        sql, total = self.order_by(items, positional, key)
        if total and self.chance(5):
            sql += self.limit()
        return sql, total

    # statements

    def simple(self) -> tuple[str, bool]:
        """SELECT [DISTINCT] items FROM source [WHERE] [ORDER BY] [LIMIT]."""
        src = self.source()
        if src.table is not None and self.chance(1):
            select = "*"
            items = [Item(c.sql.split(".")[-1], c.kind) for c in src.cols]
        else:
            windows = self.chance(3)
            n = self.count(1, 4)
            items = [self.item(src, True, windows) for _ in range(n)]
            select = ", ".join(i.render() for i in items)
        distinct = self.chance(2)
        sql = f"SELECT {'DISTINCT ' if distinct else ''}{select} FROM {src.sql}"
        sql += self.where(src)
        tail, total = self.tail(items, select == "*", None if distinct else src.key)
        return sql + tail, total

    def aggregate(self, src: Source, positional: bool = False) -> Item:
        """An aggregate, or arithmetic over aggregates."""
        function = self.pick(["COUNT(*)", "COUNT", "SUM", "MIN", "MAX", "AVG", "TOTAL", "expr"])
        if function == "expr":
            left = self.aggregate(src)
            right = self.aggregate(src)
            if _class(left.kind) == _class(right.kind) == "num":
                op = self.pick(["+", "-", "*"])
                kind = "real" if "real" in (left.kind, right.kind) else "int"
                return Item(f"({left.sql} {op} {right.sql})", kind)
            return left
        if function == "COUNT(*)":
            return Item("COUNT(*)", "int")
        distinct = "DISTINCT " if self.chance(3) else ""
        if function in ("COUNT", "MIN", "MAX"):
            col = self.pick(src.cols)
            if function == "COUNT":
                return Item(f"COUNT({distinct}{col.sql})", "int")
            return Item(f"{function}({distinct}{col.sql})", col.kind, pool=col.pool)
        arg = self.numeric(src, 1)
        if function == "TOTAL":
            if self.engine != "sqlite":
                return Item(f"SUM({arg.sql})", arg.kind)
            return Item(f"TOTAL({arg.sql})", "real")
        kind = "real" if function == "AVG" else arg.kind
        return Item(f"{function}({distinct}{arg.sql})", kind)

    def having(self, src: Source, groups: Sequence[Col]) -> str:
        """A HAVING condition: aggregates against constants, and about the group keys."""
        terms = []
        for _ in range(self.count(1, 2)):
            if groups and self.chance(3):
                terms.append(self.condition(Source("", tuple(groups), ()), 0, False))
                continue
            agg = self.aggregate(src)
            op = self.pick(["=", "<>", "<", "<=", ">", ">="])
            const = self.pick(AGG_POOL if _class(agg.kind) == "num" else agg.pool)
            terms.append(f"{agg.sql} {op} {self.value(const)}")
        joiner = self.pick([" AND ", " OR "])
        return " HAVING " + joiner.join(terms)

    def grouped(self) -> tuple[str, bool]:
        """SELECT keys, aggregates FROM source [WHERE] [GROUP BY] [HAVING] [ORDER BY] [LIMIT]."""
        src = self.source()
        n_groups = self.count(0, 2)
        groups = self.draw(st.permutations(src.cols))[:n_groups]
        shown = list(groups)
        if len(shown) == 2 and self.chance(2):
            shown.pop()  # a grouping key that is not in the output
        items = [Item(g.sql, g.kind, self.alias()) for g in shown]
        items += [
            dataclasses.replace(self.aggregate(src), alias=self.alias())
            for _ in range(self.count(1, 3))
        ]
        items = list(self.draw(st.permutations(items)))
        distinct = "DISTINCT " if self.chance(1) else ""
        sql = f"SELECT {distinct}{', '.join(i.render() for i in items)} FROM {src.sql}"
        sql += self.where(src)
        if groups:
            terms = []
            for g in groups:
                index = next((i for i, it in enumerate(items) if it.sql == g.sql), None)
                how = self.pick(["column", "position", "alias"])
                if how == "position" and index is not None:
                    terms.append(str(index + 1))
                elif how == "alias" and index is not None and items[index].alias:
                    terms.append(str(items[index].alias))
                else:
                    terms.append(g.sql)
            sql += " GROUP BY " + ", ".join(terms)
        if self.chance(5):
            sql += self.having(src, groups)
        if not groups:
            return sql, True  # one row at most
        tail, total = self.tail(items, False)
        return sql + tail, total

    def compound(self) -> tuple[str, bool]:
        """Two compatible SELECTs joined by UNION [ALL], EXCEPT or INTERSECT."""
        left_src = self.pick(SINGLE + JOINS)
        width = self.count(1, 2)
        left_cols = [self.pick(left_src.cols) for _ in range(width)]
        kinds = [c.kind for c in left_cols]
        rights = [s for s in SINGLE + JOINS if all(any(c.kind == k for c in s.cols) for k in kinds)]
        right_src = self.pick(rights)
        right_cols = [self.pick([c for c in right_src.cols if c.kind == k]) for k in kinds]
        items = [Item(c.sql, c.kind) for c in left_cols]
        sides = []
        for src, cols in ((left_src, left_cols), (right_src, right_cols)):
            distinct = "DISTINCT " if self.chance(2) else ""
            side = f"SELECT {distinct}{', '.join(c.sql for c in cols)} FROM {src.sql}"
            sides.append(side + self.where(src, subqueries=self.chance(2)))
            if len(sides) == 1:
                sides.append(self.pick(["UNION", "UNION ALL", "EXCEPT", "INTERSECT"]))
        tail, total = self.tail(items, True)
        return " ".join(sides) + tail, total


@st.composite
def queries(draw: Draw[Any], engine: str) -> Query:
    """One generated SELECT for the engine, with its parameters."""
    builder = Builder(draw, engine)
    shape = builder.pick(["simple", "grouped", "compound" if builder.general else "grouped"])
    sql, ordered = getattr(builder, shape)()
    params = tuple(builder.params) if builder.params else None
    return Query(sql, params, ordered)


# --- the clusters -----------------------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[("sqlite", 2), ("sqlite", 3), ("duckdb", 2)],
    ids=lambda p: f"{p[0]}-{p[1]}shards",
)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str]]:
    """A loaded cluster and a loaded plain database of the same engine, once per module."""
    engine, shards = request.param
    with LocalCluster(shards, engine=engine) as cluster:
        dist = exdb.connect(nodes=cluster.nodes)
        plain = plain_database(engine)
        try:
            load(dist, distributed=True)
            load(plain, distributed=False)
            yield dist, plain, engine
        finally:
            dist.close()
            plain.close()


# --- the property -----------------------------------------------------------------------------


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,  # also under CI (Hypothesis's "ci" profile would derandomize)
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_generated_select(pair: tuple[Any, Any, str], data: st.DataObject) -> None:
    """A generated SELECT answers on the cluster as on the plain database: same rows (in order
    when ORDER BY is total), same column names, an error exactly where the plain one fails."""
    dist, plain, engine = pair
    query = data.draw(queries(engine), label="query")
    note(f"seed: EXDB_HYPOTHESIS_SEED={SEED}")
    try:
        check(dist, plain, query.sql, query.params, ordered=query.ordered)
    finally:
        # exdb's connection is in a transaction (PEP 249), and a statement that failed on a
        # DuckDB shard aborts it there; the plain connection autocommits.
        dist.rollback()
