"""The gateway <-> model-server wire protocol: typed messages, framing and error codes.

Imports only the standard library and msgspec, so both sides (and tests) can use it without
torch or Flask.
"""

from protocol.codec import PROTOCOL_ID, decode, encode
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import *  # noqa: F401,F403  (the message catalogue is the package's API)

__all__ = ["PROTOCOL_ID", "decode", "encode", "ErrorCode", "ProtocolError"]
