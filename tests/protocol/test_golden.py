"""Committed v1 bytes keep decoding to the same messages (additive changes only within v1)."""

from __future__ import annotations

import pytest

from protocol import codec
from tests.protocol.golden_messages import GOLDEN, GOLDEN_DIR


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_committed_v1_bytes_still_decode(name):
    raw = (GOLDEN_DIR / f"{name}.bin").read_bytes()
    envelope, _ = codec.decode([codec.PROTOCOL_ID, raw])
    assert envelope.ref == 7
    assert envelope.body == GOLDEN[name]


def test_every_golden_message_has_committed_bytes():
    assert {p.stem for p in GOLDEN_DIR.glob("*.bin")} == set(GOLDEN)
