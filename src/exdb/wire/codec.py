"""Length-prefixed msgpack frames, with exact round trips of Python values.

Sans-IO: nothing here touches a socket or an event loop. Both the client and the server feed
received bytes into a :class:`FrameDecoder` and send what :func:`encode_frame` returns.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of msgpack. Values
msgpack has no type for travel as extension types, so that they come back as the same Python type.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import threading
import uuid
from typing import Any

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PREAUTH_LIMITS",
    "PREAUTH_MAX_FRAME",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
    "encode_frame_packed",
    "pack",
    "unpack",
]

#: Frames above this size are refused by default (64 MiB), on both sides.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

#: Frames the server takes from a peer that has not authenticated yet (HELLO, AUTH, an
#: out-of-band CANCEL) are at most this big; ``max_frame`` applies from the WELCOME on.
PREAUTH_MAX_FRAME = 4096

#: msgpack limits for the frames of a peer that has not authenticated yet: a handshake message
#: is a short array holding a small map of short strings, and never an extension value.
PREAUTH_LIMITS: dict[str, int] = {
    "max_str_len": 1024,
    "max_bin_len": 0,
    "max_array_len": 8,
    "max_map_len": 16,
    "max_ext_len": 0,
}

_HEADER = struct.Struct(">I")

# Extension type codes; documented in docs/protocol.md and never renumbered.
_EXT_DECIMAL = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_DATETIME = 4
_EXT_TIMEDELTA = 5
_EXT_UUID = 6
_EXT_BIGINT = 7


class ProtocolError(Exception):
    """The peer broke the protocol: a malformed, oversized or unexpected frame."""


def _default(value: Any) -> msgpack.ExtType:
    if isinstance(value, int):  # beyond 64 bits: msgpack refuses it, so send its digits
        return msgpack.ExtType(_EXT_BIGINT, str(value).encode())
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, datetime.datetime):  # before date: datetime is a subclass of date
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, datetime.date):
        return msgpack.ExtType(_EXT_DATE, value.isoformat().encode())
    if isinstance(value, datetime.time):
        return msgpack.ExtType(_EXT_TIME, value.isoformat().encode())
    if isinstance(value, datetime.timedelta):
        return msgpack.ExtType(
            _EXT_TIMEDELTA, msgpack.packb([value.days, value.seconds, value.microseconds])
        )
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)  # type: ignore[return-value]
    raise TypeError(f"exdb cannot send a value of type {type(value).__name__}: {value!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return int(data)
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = msgpack.unpackb(data)  # a 3-item array
        return datetime.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    raise ProtocolError(f"unknown msgpack extension type {code}")


_local = threading.local()


def _packer() -> msgpack.Packer:
    # A Packer per thread: msgpack.packb would build a new one per call, which costs more than
    # packing a small message, and a Packer is not thread-safe.
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(default=_default, use_bin_type=True)
    return packer


def pack(obj: Any) -> bytes:
    """Encode one message body as msgpack."""
    data: bytes = _packer().pack(obj)
    return data


def unpack(data: bytes | bytearray | memoryview, limits: dict[str, int] | None = None) -> Any:
    """Decode one message body. Map keys must be str or bytes (whose hashes Python randomises, so
    that no peer can make every key of a map collide); ``limits`` are msgpack's ``max_*_len``."""
    return msgpack.unpackb(
        data, ext_hook=_ext_hook, raw=False, strict_map_key=True, use_list=False, **(limits or {})
    )


def encode_frame(obj: Any) -> bytes:
    """Encode a message as one frame: length prefix plus msgpack body."""
    body: bytes = _packer().pack(obj)
    return _HEADER.pack(len(body)) + body


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_frame_packed(fields: list[Any], items: list[bytes]) -> bytes:
    """Encode ``[*fields, [item, ...]]`` as one frame, where each item is already packed (so
    that a sender can measure items one by one and never packs one twice)."""
    packer = _packer()
    parts = [_array_header(len(fields) + 1), *(packer.pack(f) for f in fields)]
    parts.append(_array_header(len(items)))
    parts.extend(items)
    body = b"".join(parts)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame decoder: feed bytes in, take whole messages out."""

    __slots__ = ("_buf", "limits", "max_frame")

    def __init__(
        self, max_frame: int = DEFAULT_MAX_FRAME, limits: dict[str, int] | None = None
    ) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        #: msgpack limits (see PREAUTH_LIMITS); while set, ``feed`` decodes one message per
        #: call and keeps the rest undecoded, so that the owner can lift the limits after it.
        self.limits = limits

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add received bytes; return every message now complete, in order.

        Raises ProtocolError on a frame above ``max_frame`` (as soon as its header arrives, before
        its body is buffered) or on a body that is not valid msgpack. While ``limits`` is set it
        returns at most one message; ``feed(b"")`` then takes the next one already received.
        """
        if self._buf:
            self._buf += data
            data = self._buf
        messages = []
        pos = 0
        end = len(data)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(data, pos)
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
            if end - pos - 4 < size:
                break
            try:
                messages.append(unpack(data[pos + 4 : pos + 4 + size], self.limits))
            except ProtocolError:
                raise
            except MemoryError:
                raise ProtocolError(
                    f"not enough memory to decode a frame of {size} bytes"
                ) from None
            except Exception as exc:
                raise ProtocolError(f"malformed frame: {exc}") from None
            pos += 4 + size
            if self.limits is not None:
                break
        if data is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += data[pos:]  # keep the start of a frame for the next feed
        return messages

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their frame."""
        return len(self._buf)
