"""The SQLAlchemy dialect (exdb://), the catalog queries it relies on, lastrowid and RETURNING on
the distributed cursor, and pandas through the engine: on 1 node and on 2, against real servers,
with the same operations on one plain SQLite database as the reference."""

from __future__ import annotations

import asyncio
import datetime
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.client.url import parse_url
from exdb.cluster import LocalCluster
from exdb.sqlalchemy import create_engine, engine_url

sa = pytest.importorskip("sqlalchemy")
orm = pytest.importorskip("sqlalchemy.orm")
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module", params=[1, 2], ids=["1node", "2nodes"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A SQLite cluster of 1 and of 2 nodes, shared by the module; tests use their own tables."""
    with LocalCluster(request.param) as c:
        yield c


def _url(cluster: LocalCluster) -> str:
    if len(cluster.nodes) == 1:
        return f"exdb://{cluster.nodes[0]}/"
    return f"exdb:///?nodes={','.join(cluster.nodes)}"


@pytest.fixture
def engine(cluster: LocalCluster) -> Iterator[Any]:
    """An engine on the cluster; disposed after the test."""
    eng = sa.create_engine(_url(cluster))
    yield eng
    eng.dispose()


@pytest.fixture
def reference() -> Iterator[Any]:
    """One plain SQLite database (in memory, one connection) to compare with."""
    eng = sa.create_engine("sqlite://")
    yield eng
    eng.dispose()


def _dbapi(cluster: LocalCluster, **options: Any) -> Any:
    if len(cluster.nodes) == 1:
        return exdb.connect(cluster.nodes[0], **options)
    return exdb.connect(nodes=cluster.nodes, **options)


# --- URLs ------------------------------------------------------------------------------------


def test_parse_url_forms() -> None:
    assert parse_url("exdb://127.0.0.1:5001,127.0.0.1:5002/?password=p&statement_timeout=50") == (
        ["127.0.0.1:5001", "127.0.0.1:5002"],
        {"password": "p", "statement_timeout": 50},
    )
    assert parse_url("exdb://ann:s%40cret@[::1]:5001") == (
        ["[::1]:5001"],
        {"user": "ann", "password": "s@cret"},
    )
    assert parse_url("exdb:///?nodes=h:1,h:2&node=h:3&autocommit=true&ssl_cafile=/ca.pem") == (
        ["h:1", "h:2", "h:3"],
        {"autocommit": True, "ssl_params": {"cafile": "/ca.pem"}},
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("exdb:///", "names no node"),
        ("exdb://h:1/db", "name no database"),
        ("exdb://h:1/?colour=red", "unknown exdb URL option 'colour'"),
        ("exdb://h:1/?statement_timeout=soon", "must be an integer"),
        ("exdb://h:1/?autocommit=maybe", "true or false"),
        ("exdb://h/", "expected 'host:port'"),
        ("exdb://h:1/?password=a&password=b", "twice"),
        ("postgres://h:1/", "not an exdb URL"),
    ],
)
def test_parse_url_refuses(url: str, message: str) -> None:
    with pytest.raises(exdb.ProgrammingError, match=message):
        parse_url(url)


def test_create_engine_url_options(cluster: LocalCluster) -> None:
    url = _url(cluster) + ("&" if "?" in _url(cluster) else "?") + "statement_timeout=5000"
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            raw = conn.connection.dbapi_connection
            kind = exdb.Connection if len(cluster.nodes) == 1 else exdb.DistributedConnection
            assert isinstance(raw, kind)
            assert raw.options.statement_timeout == 5000
            assert conn.dialect.name == "sqlite" and conn.dialect.driver == "exdb"
            assert conn.execute(sa.text("SELECT 40 + 2")).scalar() == 42
    finally:
        eng.dispose()


def test_create_engine_takes_exdbs_own_url_form(cluster: LocalCluster) -> None:
    """exdb.sqlalchemy.create_engine reads exdb://h:p,h:p/?... (which SQLAlchemy refuses)."""
    text = f"exdb://{','.join(cluster.nodes)}/?statement_timeout=4000&autocommit=false"
    url = engine_url(text)
    assert url.query["nodes"] == ",".join(cluster.nodes) and url.host is None
    eng = create_engine(text)
    try:
        with eng.connect() as conn:
            raw = conn.connection.dbapi_connection
            kind = exdb.Connection if len(cluster.nodes) == 1 else exdb.DistributedConnection
            assert isinstance(raw, kind)
            assert raw.options.statement_timeout == 4000
            assert conn.execute(sa.text("SELECT 6 * 7")).scalar() == 42
    finally:
        eng.dispose()
    secret = engine_url("exdb://me:s%40cret@127.0.0.1:1,127.0.0.1:2/")
    assert (secret.username, secret.password) == ("me", "s@cret")
    with pytest.raises(exdb.ProgrammingError):
        engine_url("exdb://127.0.0.1:1/?nope=1")


def test_duckdb_nodes_are_refused() -> None:
    with LocalCluster(1, engine="duckdb") as c:
        eng = sa.create_engine(f"exdb://{c.nodes[0]}/")
        try:
            with pytest.raises(
                sa.exc.DBAPIError, match="speaks SQLite's SQL; these nodes run duckdb"
            ):
                eng.connect()
        finally:
            eng.dispose()


# --- Core ------------------------------------------------------------------------------------


def _core_script(eng: Any, suffix: str) -> list[Any]:
    """Create, insert, update, delete and select through Core; every result, in order."""
    md = sa.MetaData()
    t = sa.Table(
        f"items_{suffix}",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("made", sa.Date),
        sa.Column("seen", sa.DateTime),
        sa.Column("ok", sa.Boolean),
        sa.Column("blob", sa.LargeBinary),
    )
    out: list[Any] = []
    md.create_all(eng)
    try:
        with eng.begin() as conn:
            r = conn.execute(
                t.insert(),
                {
                    "id": 7,
                    "name": "seven",
                    "price": 7.5,
                    "made": datetime.date(2024, 2, 29),
                    "seen": datetime.datetime(2024, 1, 2, 3, 4, 5, 600),
                    "ok": True,
                    "blob": b"\x00\x01",
                },
            )
            out.append(r.inserted_primary_key)
            rows = [
                {"id": i, "name": f"n{i}", "price": i * 1.25, "made": None, "seen": None,
                 "ok": i % 2 == 0, "blob": None}
                for i in range(1, 41)
                if i != 7
            ]  # fmt: skip
            out.append(conn.execute(t.insert(), rows).rowcount)
            out.append(conn.execute(t.update().where(t.c.id < 5).values(name="small")).rowcount)
            out.append(conn.execute(t.update().where(t.c.id == 9).values(price=99)).rowcount)
            out.append(conn.execute(t.delete().where(t.c.price > 40)).rowcount)
        with eng.connect() as conn:
            out.append(conn.execute(sa.select(t).order_by(t.c.id)).all())
            out.append(conn.execute(sa.select(t.c.name).where(t.c.id == 7)).scalar_one())
            out.append(
                conn.execute(
                    sa.select(t.c.ok, sa.func.count(), sa.func.sum(t.c.price))
                    .group_by(t.c.ok)
                    .order_by(t.c.ok)
                ).all()
            )
            out.append(
                conn.execute(sa.select(t.c.id).order_by(t.c.price.desc()).limit(3).offset(2)).all()
            )
            out.append(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar())
            conn.commit()
            conn.execute(t.delete())
            conn.rollback()
            out.append(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar())
    finally:
        md.drop_all(eng)
    return out


def test_core_matches_one_database(engine: Any, reference: Any) -> None:
    assert _core_script(engine, "core") == _core_script(reference, "core")


def test_reflection_of_the_catalog(engine: Any, cluster: LocalCluster) -> None:
    md = sa.MetaData()
    parents = sa.Table(
        "parents",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(8), nullable=False, unique=True),
        sa.Column("note", sa.Text, server_default="none"),
    )
    sa.Table(
        "children",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("parents.id"), nullable=False),
        sa.Column("label", sa.String(20), index=True),
    )
    md.create_all(engine)
    try:
        with engine.connect() as conn:
            conn.execute(parents.insert(), {"id": 1, "code": "a"})
            conn.commit()
        insp = sa.inspect(engine)
        assert insp.get_table_names() == ["children", "parents"]  # not exdb_catalog
        assert insp.has_table("parents") and not insp.has_table("nope")
        cols = insp.get_columns("parents")
        assert [(c["name"], str(c["type"]), c["nullable"]) for c in cols] == [
            ("id", "INTEGER", False),
            ("code", "VARCHAR(8)", False),
            ("note", "TEXT", True),
        ]
        assert cols[2]["default"] == "'none'"
        assert insp.get_pk_constraint("children")["constrained_columns"] == ["id"]
        fks = insp.get_foreign_keys("children")
        assert [
            (f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks
        ] == [(["parent_id"], "parents", ["id"])]
        assert [(i["name"], i["column_names"]) for i in insp.get_indexes("children")] == [
            ("ix_children_label", ["label"])
        ]
        assert [u["column_names"] for u in insp.get_unique_constraints("parents")] == [["code"]]
        assert insp.get_view_names() == []
        reflected = sa.MetaData()
        reflected.reflect(engine)
        assert sorted(reflected.tables) == ["children", "parents"]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(reflected.tables["parents"])).all()
        assert rows == [(1, "a", "none")]
    finally:
        md.drop_all(engine)


def test_views(engine: Any, cluster: LocalCluster) -> None:
    """A view is defined on every node (and in exdb's catalog): the inspector finds it."""
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE vbase (id INTEGER PRIMARY KEY, v INTEGER)"))
        conn.commit()
        try:
            conn.execute(sa.text("CREATE VIEW vv AS SELECT id FROM vbase WHERE v > 0"))
            conn.commit()
            insp = sa.inspect(conn)
            assert insp.get_view_names() == ["vv"]
            assert "SELECT id FROM vbase" in insp.get_view_definition("vv")
            conn.execute(sa.text("INSERT INTO vbase VALUES (1, 5), (2, -1), (3, 7)"))
            assert conn.execute(sa.text("SELECT COUNT(*) FROM vv")).scalar() == 2
            conn.execute(sa.text("DROP VIEW vv"))
        finally:
            conn.execute(sa.text("DROP TABLE vbase"))
            conn.commit()


# --- the catalog queries on the DB-API door --------------------------------------------------


def test_catalog_queries_answer_once(cluster: LocalCluster) -> None:
    conn = _dbapi(cluster, autocommit=True)
    try:
        conn.execute("CREATE TABLE cq (id INTEGER PRIMARY KEY, a TEXT)")
        conn.execute("CREATE INDEX cq_a ON cq (a)")
        expect = [(0, "id", "INTEGER", 0, None, 1), (1, "a", "TEXT", 0, None, 0)]
        assert conn.execute('PRAGMA main.table_info("cq")').fetchall() == expect
        assert conn.execute("SELECT * FROM pragma_table_info('cq')").fetchall() == expect
        assert conn.execute("PRAGMA index_list(cq)").fetchall() == [(0, "cq_a", 0, "c", 0)]
        listed = "SELECT type, name FROM sqlite_master WHERE tbl_name LIKE 'cq%' ORDER BY name"
        assert conn.execute(listed).fetchall() == [("table", "cq"), ("index", "cq_a")]
        found = "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ?"
        assert conn.execute(found, ("cq",)).fetchall() == [("cq",)]
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master").fetchall()]
        if len(cluster.nodes) > 1:
            assert "exdb_catalog" not in names  # exdb's own table is not listed
        if len(cluster.nodes) > 1:
            with pytest.raises(exdb.NotSupportedError, match="schema catalog"):
                conn.execute("SELECT * FROM sqlite_master JOIN cq ON cq.a = sqlite_master.name")
    finally:
        conn.execute("DROP TABLE cq")
        conn.close()


def test_pandas_to_sql_on_a_raw_connection(cluster: LocalCluster) -> None:
    """pandas' sqlite3 fallback (a DB-API connection, not an engine) asks sqlite_master."""
    conn = _dbapi(cluster)
    try:
        df = pd.DataFrame({"id": range(50), "x": [i * 0.5 for i in range(50)]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pandas only supports SQLAlchemy..."
            assert df.to_sql("rawdf", conn, index=False) == 50
            back = pd.read_sql("SELECT id, x FROM rawdf ORDER BY id", conn)
        conn.commit()
        pd.testing.assert_frame_equal(back, df, check_dtype=False)
    finally:
        conn.execute("DROP TABLE rawdf")
        conn.commit()
        conn.close()


# --- lastrowid and RETURNING -----------------------------------------------------------------


def test_lastrowid_where_it_names_the_row(cluster: LocalCluster) -> None:
    conn = _dbapi(cluster, autocommit=True)
    cur = conn.cursor()
    try:
        cur.execute("CREATE TABLE lr (id INTEGER PRIMARY KEY, v TEXT)")
        cur.execute("CREATE TABLE lk (v TEXT)")
        cur.execute("CREATE TABLE lt (code TEXT PRIMARY KEY, v TEXT)")
        for key in (5, 17, 3):
            cur.execute("INSERT INTO lr VALUES (?, ?)", (key, "x"))
            assert cur.lastrowid == key
        cur.execute("INSERT INTO lr (v, id) VALUES ('y', 40)")
        assert cur.lastrowid == 40
        one = len(cluster.nodes) == 1
        cur.execute("INSERT INTO lk VALUES ('k')")
        # Generated rowids repeat across shards: on several nodes they name no row.
        assert cur.lastrowid == (1 if one else None)
        cur.execute("INSERT INTO lt VALUES ('a', 'x')")
        assert cur.lastrowid == (1 if one else None)
        cur.execute("INSERT INTO lr VALUES (50, 'a'), (51, 'b')")
        if not one:
            assert cur.lastrowid is None  # several rows, maybe on several shards
        cur.execute("UPDATE lr SET v = 'z' WHERE id = 5")
        if not one:
            assert cur.lastrowid is None
        if not one:
            cur.execute("CREATE TABLE lref (id INTEGER PRIMARY KEY, v TEXT)")
            cur.execute("SELECT create_reference_table('lref')")
            cur.execute("INSERT INTO lref (v) VALUES ('a')")
            assert cur.lastrowid == 1  # every node holds the row, with the same rowid
            cur.execute("INSERT INTO lref (v) VALUES ('b')")
            assert cur.lastrowid == 2
            with pytest.raises(exdb.NotSupportedError, match="distribution column id"):
                cur.execute("INSERT INTO lr (v) VALUES ('no key')")
            cur.execute("DROP TABLE lref")
    finally:
        for table in ("lr", "lk", "lt"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()


def test_lastrowid_on_the_asyncio_door(cluster: LocalCluster) -> None:
    async def run() -> list[Any]:
        conn = await exdb.connect_async(nodes=cluster.nodes, autocommit=True)
        try:
            cur = conn.cursor()
            await cur.execute("CREATE TABLE alr (id INTEGER PRIMARY KEY, v TEXT)")
            await cur.execute("INSERT INTO alr VALUES (?, ?)", (12, "a"))
            first = cur.lastrowid
            await cur.execute("INSERT INTO alr VALUES (13, 'b') RETURNING id, v")
            returned = await cur.fetchall()
            await cur.execute("DROP TABLE alr")
            return [first, returned]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [12, [(13, "b")]]


def test_returning_matches_one_database(engine: Any, reference: Any) -> None:
    def script(eng: Any) -> list[Any]:
        md = sa.MetaData()
        t = sa.Table(
            "ret",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("v", sa.String(10)),
            sa.Column("n", sa.Integer, server_default="3"),
        )
        md.create_all(eng)
        try:
            with eng.begin() as conn:
                out = [conn.execute(t.insert().returning(t.c.id, t.c.n), {"id": 4, "v": "a"}).all()]
                many = t.insert().values([{"id": i, "v": str(i)} for i in range(10, 20)])
                out.append(sorted(conn.execute(many.returning(t.c.id)).all()))
                upd = t.update().where(t.c.id > 15).values(n=t.c.n + 1).returning(t.c.id, t.c.n)
                out.append(sorted(conn.execute(upd).all()))
                out.append(
                    sorted(conn.execute(t.delete().where(t.c.id < 12).returning(t.c.v)).all())
                )
            return out
        finally:
            md.drop_all(eng)

    assert script(engine) == script(reference)


# --- the ORM ---------------------------------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    books: orm.Mapped[list[Book]] = orm.relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.id"
    )


class Book(Base):
    __tablename__ = "books"
    # Distributed by author_id (see _make_schema): an author's books live on the author's node,
    # so the join on authors.id = books.author_id is co-located.
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    author_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("authors.id"))
    title: orm.Mapped[str] = orm.mapped_column(sa.String(80))
    genre_id: orm.Mapped[int | None] = orm.mapped_column(sa.ForeignKey("genres.id"))
    author: orm.Mapped[Author] = orm.relationship(back_populates="books")
    genre: orm.Mapped[Genre | None] = orm.relationship()


class Genre(Base):
    __tablename__ = "genres"
    # A reference table: every node holds all of it; joins to it are local to each node.
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(20))


def _make_schema(eng: Any, distributed: bool) -> None:
    Base.metadata.create_all(eng)
    if distributed:
        with eng.begin() as conn:
            conn.execute(sa.text("SELECT create_distributed_table('books', 'author_id')"))
            conn.execute(sa.text("SELECT create_reference_table('genres')"))


def _orm_script(eng: Any, distributed: bool) -> list[Any]:
    _make_schema(eng, distributed)
    out: list[Any] = []
    try:
        with orm.Session(eng) as session:
            # Genres: a reference table, so its keys may be generated (lastrowid names the row).
            genres = [Genre(name=n) for n in ("poetry", "novel")]
            session.add_all(genres)
            session.flush()
            out.append([g.id for g in genres])
            for a in range(1, 6):
                session.add(
                    Author(
                        id=a,
                        name=f"author {a}",
                        books=[
                            Book(id=a * 100 + b, title=f"book {a}.{b}", genre=genres[b % 2])
                            for b in range(a)
                        ],
                    )
                )
            session.commit()
        with orm.Session(eng) as session:
            a3 = session.get(Author, 3)
            assert a3 is not None
            out.append([(b.title, b.genre.name if b.genre else None) for b in a3.books])
            joined = session.scalars(
                sa.select(Author).options(orm.joinedload(Author.books)).order_by(Author.id)
            ).unique()
            out.append([(a.name, len(a.books)) for a in joined])
            selectin = session.scalars(
                sa.select(Author).options(orm.selectinload(Author.books)).where(Author.id > 2)
            )
            out.append(sorted((a.id, [b.id for b in a.books]) for a in selectin))
            by_genre = session.execute(
                sa.select(Genre.name, sa.func.count(Book.id))
                .join(Book, Book.genre_id == Genre.id)
                .group_by(Genre.name)
                .order_by(Genre.name)
            ).all()
            out.append(by_genre)
            a3.name = "renamed"
            a3.books[0].title = "retitled"
            session.delete(session.get(Author, 5))
            session.commit()
        with orm.Session(eng) as session:
            out.append(session.scalars(sa.select(Author.name).order_by(Author.id)).all())
            out.append(session.scalar(sa.select(sa.func.count()).select_from(Book)))
            out.append(session.get(Book, 300).title)  # type: ignore[union-attr]
    finally:
        Base.metadata.drop_all(eng)
    return out


def test_orm_matches_one_database(engine: Any, reference: Any, cluster: LocalCluster) -> None:
    assert _orm_script(engine, len(cluster.nodes) > 1) == _orm_script(reference, False)


def test_orm_generated_key_on_a_distributed_table_is_refused(
    engine: Any, cluster: LocalCluster
) -> None:
    if len(cluster.nodes) == 1:
        pytest.skip("one node generates keys as SQLite does")
    _make_schema(engine, True)
    try:
        with orm.Session(engine) as session:
            session.add(Author(name="no id"))
            with pytest.raises(sa.exc.NotSupportedError, match="distribution column id"):
                session.flush()
    finally:
        Base.metadata.drop_all(engine)


# --- pandas through the engine ---------------------------------------------------------------


def test_pandas_to_sql_and_read_sql_table(engine: Any, reference: Any) -> None:
    df = pd.DataFrame(
        {
            "id": range(1, 301),
            "name": [f"n{i}" if i % 7 else None for i in range(1, 301)],
            "x": [i / 8 for i in range(1, 301)],
            "flag": [i % 3 == 0 for i in range(1, 301)],
            "at": pd.date_range("2024-01-01", periods=300, freq="h"),
        }
    )
    frames = []
    for eng in (engine, reference):
        assert df.to_sql("frame", eng, index=False) == 300
        with pytest.raises(ValueError, match="already exists"):
            df.to_sql("frame", eng, index=False)
        df.head(5).to_sql("frame", eng, index=False, if_exists="append", method="multi")
        back = pd.read_sql_table("frame", eng)
        frames.append(back.sort_values(["id", "x"], kind="stable").reset_index(drop=True))
        df.to_sql("frame", eng, index=False, if_exists="replace", chunksize=64)
        assert pd.read_sql_query("SELECT COUNT(*) AS n FROM frame", eng)["n"][0] == 300
        with eng.begin() as conn:
            conn.execute(sa.text("DROP TABLE frame"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert len(frames[0]) == 305
