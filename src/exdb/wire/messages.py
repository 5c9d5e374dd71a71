"""Message kinds and their layouts. Every message is a msgpack array whose first two items are
its kind and its request id; docs/protocol.md is the specification."""

from __future__ import annotations

import enum

__all__ = ["CODE_CANCELED", "FLAG_AUTOCOMMIT", "MAGIC", "PROTOCOL_VERSION", "SCRAM", "Msg"]

#: Sent by the client once, before its first frame, so that a stray peer is refused at once.
MAGIC = b"EXDB"
#: The handshake carries this; the server refuses any other. 2: SCRAM-SHA-256 replaced the
#: plaintext password of version 1.
PROTOCOL_VERSION = 2

#: The one authentication mechanism (RFC 7677, without channel binding), named in HELLO's "auth".
SCRAM = "SCRAM-SHA-256"

#: QUERY and EXECMANY flag: outside a transaction, the statement commits on its own; without it
#: the session opens a transaction first. Inside an open transaction it runs in that transaction.
FLAG_AUTOCOMMIT = 1

#: The code an ERROR carries when its request was cancelled.
CODE_CANCELED = "canceled"


class Msg(enum.IntEnum):
    """Message kinds. Client to server below 16, server to client from 16."""

    # [HELLO, 0, {"protocol": int, "user": str|None, "client": str}], plus, from a client with
    # a password, "auth": SCRAM and "scram": the SCRAM client-first message.
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
    # [AUTH, 0, {"scram": client-final}]: the answer to CHALLENGE.
    AUTH = 9
    # [ARROW, 0, target_id]: send the rest of that request's result set as Arrow IPC (RESULT
    # frames whose rows field is bin); honoured between result batches, like an in-band CANCEL.
    # Sent only to a server whose WELCOME says "arrow": true.
    ARROW = 10
    # Out of band, as the first message of a second connection (docs/protocol.md §12.2):
    # [LOCKS, 0, {"session": int, "key": str}] -> [PONG, 0, {"waits": [[waiter_gid, wait_id,
    # holder_gid, waited_s], ...], "aborted": false}]; with "abort": wait_id and "message": str,
    # that session's wait ends as a deadlock's victim if it still goes on ("aborted": true).
    LOCKS = 14
    # [TXNID, 0, gid]: the client's id of the transaction the session works for, sent before
    # the transaction's first statement on the node; no answer.
    TXNID = 15

    # [WELCOME, 0, {"protocol": int, "server": str, "engine": str, "session": int, "key": str}],
    # plus "scram": the SCRAM server-final message after a SCRAM exchange.
    WELCOME = 16
    # [RESULT, id, columns: [[name, type], ...] | None, rows: [[...], ...], more: bool,
    #  rowcount: int, lastrowid: int | None]; after an ARROW, rows may be bin: an Arrow IPC
    #  stream (schema, record batches, end) holding the next rows.
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
    # [CHALLENGE, 0, {"scram": server-first}]: the answer to a HELLO with a SCRAM client-first.
    CHALLENGE = 21
