"""Message kinds and their layouts. Every message is a msgpack array whose first two items are
its kind and its request id; docs/protocol.md is the specification."""

from __future__ import annotations

import enum

__all__ = ["CODE_CANCELED", "FLAG_AUTOCOMMIT", "MAGIC", "PROTOCOL_VERSION", "Msg"]

#: Sent by the client once, before its first frame, so that a stray peer is refused at once.
MAGIC = b"EXDB"
#: The handshake carries this; the server refuses any other.
PROTOCOL_VERSION = 1

#: QUERY and EXECMANY flag: outside a transaction, the statement commits on its own; without it
#: the session opens a transaction first. Inside an open transaction it runs in that transaction.
FLAG_AUTOCOMMIT = 1

#: The code an ERROR carries when its request was cancelled.
CODE_CANCELED = "canceled"


class Msg(enum.IntEnum):
    """Message kinds. Client to server below 16, server to client from 16."""

    # [HELLO, 0, {"protocol": int, "user": str|None, "password": str|None, "client": str}]
    HELLO = 1
    # [QUERY, id, sql, params: list|None, flags]
    QUERY = 2
    # [EXECMANY, id, sql, [params, ...], flags]
    EXECMANY = 3
    # In band: [CANCEL, 0, id_to_cancel] (honoured between result batches).
    # Out of band, as the first message of a second connection:
    # [CANCEL, 0, {"session": int, "key": str, "request": int}] -> [PONG, 0, {"cancelled": bool}]
    CANCEL = 4
    # [TXN, id, "begin" | "commit" | "rollback"]
    TXN = 5
    # [PING, id]
    PING = 6
    # [BYE, 0]: the client is closing; the server rolls back and closes the session.
    BYE = 7
    # [BATCH, id, sql, [params, ...], flags]: the statement once per parameter set, each on
    # its own; answered by RESULTS frames, one result (or error) per set, in order.
    BATCH = 8

    # [WELCOME, 0, {"protocol": int, "server": str, "engine": str, "session": int, "key": str}]
    WELCOME = 16
    # [RESULT, id, columns: [[name, type], ...] | None, rows: [[...], ...], more: bool,
    #  rowcount: int, lastrowid: int | None]
    RESULT = 17
    # [ERROR, id, pep249_class_name, message] or [..., message, code] (code: CODE_CANCELED);
    # id 0 means the whole session failed and closes.
    ERROR = 18
    # [PONG, id, {"in_transaction": bool}]
    PONG = 19
    # [RESULTS, id, more: bool, [item, ...]], the answer to BATCH. An item is a piece of one
    # parameter set's answer, in set order: [RESULT, columns | None, rows, more, rowcount]
    # (columns only in a set's first piece; more: this set's rows go on in the next item) or
    # [ERROR, pep249_class_name, message] (the set failed; pieces sent before it are void).
    RESULTS = 20
