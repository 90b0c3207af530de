"""The Standard Webhooks signature (https://www.standardwebhooks.com): HMAC-SHA256 over
``{id}.{timestamp}.{body}`` with the secret's bytes, sent as ``v1,<base64>``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec's lower bound for a secret's random bytes
MAKE_ONE = "python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_``-prefixed (or bare) base64 secret; ValueError, saying how to make one, if it is not."""
    text = secret.strip()
    text = text[len(PREFIX):] if text.startswith(PREFIX) else text
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"WEBHOOK_SECRET must be whsec_ followed by the base64 of at least {MIN_SECRET_BYTES} random "
                         f"bytes; make one with: {MAKE_ONE}")
    return key


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
