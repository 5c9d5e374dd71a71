"""eXtremeSQL's asynchronous distributed connection example, in Python 3, against exdb.

Start two shards first, for example ``exdb cluster --shards 2 --base-port 5001``, then::

    python examples/reference.py 127.0.0.1:5001 127.0.0.1:5002
"""

from __future__ import annotations

import pprint
import sys

import exdb

# MyTable with a column per eXtremeSQL type of the original example: u2, i1, i2, i4 and i8
# integers, flt and dbl reals.
MYTABLE = """
CREATE TABLE IF NOT EXISTS MyTable (
    pk    INTEGER PRIMARY KEY,
    value VARCHAR,
    u2    INTEGER,
    i1    INTEGER,
    i2    INTEGER,
    i4    INTEGER,
    i8    BIGINT,
    flt   REAL,
    dbl   DOUBLE
)
"""


def main(nodes: tuple[str, ...], n_workers: int = 2) -> None:
    """Run the example end to end."""
    with exdb.connect(nodes=nodes, autocommit=True) as setup:
        setup.execute(MYTABLE)
        setup.execute("DELETE FROM MyTable")

    conn = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=n_workers)
    try:
        r = conn.execute("SELECT 1,2")
        print("len(r)=", len(r))
        for k in range(len(r)):
            pprint.pprint(r[k])

        r = conn.execute("SELECT 1,2,?", (3,))
        print("len(r)=", len(r))
        for k in range(len(r)):
            pprint.pprint(r[k])

        q = [
            "INSERT INTO MyTable(pk, value, u2, i1, i2, i4, i8, flt, dbl)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ] * n_workers
        args = [(i * 100, f"str{i}", i, i, i, i, i, i * 100, i * 100.9) for i in range(n_workers)]
        r = conn.execute(q, args)
        print("len(r)=", len(r))
        for k in range(len(r)):
            pprint.pprint(r[k])

        q = [
            "SELECT COUNT(*) FROM MyTable",
            "SELECT SUM(pk) FROM MyTable",
            "SELECT SUM(i1) FROM MyTable",
            "SELECT SUM(i2) FROM MyTable",
        ]
        r = conn.execute(q, None)
        print("len(r)=", len(r))
        for k in range(len(r)):
            pprint.pprint(r[k])
    finally:
        conn.close()


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("127.0.0.1:5001", "127.0.0.1:5002"))
