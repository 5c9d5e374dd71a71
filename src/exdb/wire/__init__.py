"""The wire protocol: a sans-IO codec shared by the client and the server (see docs/protocol.md)."""

from exdb.wire.codec import FrameDecoder, ProtocolError, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

__all__ = ["MAGIC", "PROTOCOL_VERSION", "FrameDecoder", "Msg", "ProtocolError", "encode_frame"]
