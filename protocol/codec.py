"""Framing: ``[PROTOCOL_ID, msgpack(Envelope), *blobs]``.

The first frame names the protocol version, so a peer speaking another version is refused
with a clear error instead of misread. Images travel as extra raw frames, never base64 inside
the control message. There is no pickle anywhere: msgspec decodes only the declared types.
"""

from __future__ import annotations

import msgspec

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import Envelope

PROTOCOL_ID = b"SDCPU/1"

# Everything in a request but its uploads (params, ids, the envelope) fits well within this.
_REQUEST_OVERHEAD = 256 * 2**10


def largest_request_bytes(max_upload_bytes: int) -> int:
    """The largest frame a legal request can have: a Submit carrying an init image and a mask of
    ``max_upload_bytes`` each. A receiving socket's ZMQ_MAXMSGSIZE, so a bigger frame drops its peer
    before it is read into memory."""
    return 2 * max_upload_bytes + _REQUEST_OVERHEAD


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


class _Ref(msgspec.Struct):
    ref: int = 0


_ref_decoder = msgspec.msgpack.Decoder(_Ref)


def encode(body, ref: int = 0, blobs: tuple[bytes, ...] | list[bytes] = ()) -> list[bytes]:
    """Frames for one message (without any ZMQ routing prefix)."""
    return [PROTOCOL_ID, _encoder.encode(Envelope(ref=ref, body=body)), *blobs]


def decode(frames: list[bytes]) -> tuple[Envelope, list[bytes]]:
    """Parse frames produced by :func:`encode`; raises :class:`ProtocolError` on anything else."""
    if len(frames) < 2:
        raise ProtocolError(f"expected at least 2 frames, got {len(frames)}")
    version = bytes(frames[0])
    if version != PROTOCOL_ID:
        raise ProtocolError(
            f"protocol mismatch: peer speaks {version[:32]!r}, this side {PROTOCOL_ID!r}"
        )
    try:
        envelope = _decoder.decode(frames[1])
    except msgspec.ValidationError as exc:
        # A well-formed message that breaks the contract (e.g. a Submit of 1000 steps): its sender
        # gets the reason, under its own ref, as invalid params rather than a protocol mismatch.
        code = ErrorCode.INVALID_PARAMS if "at `$.body.params" in str(exc) else ErrorCode.PROTOCOL_MISMATCH
        raise ProtocolError(f"refused message: {exc}", code, ref=_ref_of(frames[1])) from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable message: {exc}") from exc
    return envelope, [bytes(f) for f in frames[2:]]


def _ref_of(frame) -> int:
    try:
        return _ref_decoder.decode(frame).ref
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0
