"""Reading a PNG's infotext (its ``parameters`` text chunk) back into request fields, as hostile input."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image, PngImagePlugin

from gateway.errors import ApiError
from gateway.png_info import parse_infotext, read_parameters, to_fields

A1111 = ('a (red:1.2) door,\nat night <lora:ink:0.8>\nNegative prompt: blurry, low quality\n'
         'Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 768x512, Model hash: abc, '
         'Model: sd14, Lora hashes: "ink: 1a2b, pencil: 3c4d", Version: v1.10.0')


def png(text: str | None, compressed: bool = False) -> bytes:
    meta = PngInfoWith(text, compressed) if text is not None else None
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=meta)
    return buffer.getvalue()


def PngInfoWith(text: str, compressed: bool) -> PngImagePlugin.PngInfo:  # noqa: N802
    meta = PngImagePlugin.PngInfo()
    if compressed:
        meta.add_itxt("parameters", text, zip=True)
    else:
        meta.add_text("parameters", text)
    return meta


def test_an_a1111_infotext_is_read_with_its_quoted_values_and_multi_line_prompt():
    info = parse_infotext(A1111)
    assert info["prompt"] == "a (red:1.2) door,\nat night <lora:ink:0.8>"
    assert info["negative_prompt"] == "blurry, low quality"
    assert info["Lora hashes"] == "ink: 1a2b, pencil: 3c4d" and info["Version"] == "v1.10.0"
    assert to_fields(info) == {"prompt": info["prompt"], "negative_prompt": "blurry, low quality", "steps": 20,
                               "guidance_scale": 7.0, "seed": 1234, "model": "sd14", "width": 768, "height": 512,
                               "scheduler": "dpmpp_2m_karras"}


@pytest.mark.parametrize("compressed", [False, True])
def test_the_text_chunk_is_found_plain_or_compressed(compressed):
    assert read_parameters(png("Steps: 3, Seed: 1, é", compressed)) == "Steps: 3, Seed: 1, é"
    assert read_parameters(png(None)) is None


def test_a_prompt_only_infotext_and_odd_values_give_what_they_can():
    assert to_fields(parse_infotext("just a prompt")) == {"prompt": "just a prompt"}
    odd = parse_infotext("x\nSteps: many, Sampler: Nope, Size: big, Seed: 7")
    assert to_fields(odd) == {"prompt": "x", "seed": 7}


@pytest.mark.parametrize("data", [b"GIF89a....", b"", b"\x89PNG\r\n\x1a\n" + b"\xff" * 20])
def test_what_is_no_png_is_a_clear_400_and_a_broken_one_has_no_text(data):
    if data.startswith(b"\x89PNG"):
        assert read_parameters(data) is None
    else:
        with pytest.raises(ApiError) as caught:
            read_parameters(data)
        assert caught.value.status == 400 and caught.value.field == "image"


def test_a_compressed_chunk_is_inflated_only_to_a_bound():
    bomb = zlib.compress(b"A" * 50_000_000)
    chunk = b"parameters\x00\x00" + bomb
    import struct

    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I4s", len(chunk), b"zTXt") + chunk + b"\0\0\0\0"
            + struct.pack(">I4s", 0, b"IEND") + b"\0\0\0\0")
    text = read_parameters(data)
    assert text is not None and len(text) <= 64 * 1024
